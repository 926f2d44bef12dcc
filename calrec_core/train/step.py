"""One optimizer step: both towers, the three loss terms, gradient accumulation, the update.

Parameters and optimizer state are plain nested dicts of arrays (``nnx.to_pure_dict``), placed
on the mesh by the model's logical-axis rules; the step is one ``jax.jit`` with explicit
shardings, so the same code runs on 1 CPU, 8 fake CPU devices, a GPU or a TPU slice.

A step of several microbatches is the full-batch step, computed in two passes (GradCache):
pass 1 embeds every microbatch (v^U, v^TU, v^T, no activations kept) and differentiates the
contrastive losses over ALL users of the step with respect to those embeddings; pass 2 runs
each microbatch's forward + backward of L_NIG's share plus <dL/dv, v>, accumulating the
parameter gradients. Loss and gradients equal the single-pass step; the cost is one extra
forward of both towers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from calrec_core.model import sharding as model_sharding
from calrec_core.model.config import Gemma3Config
from calrec_core.model.gemma import project_logits
from calrec_core.train.batching import Batch
from calrec_core.train.config import TrainConfig
from calrec_core.train.distributed import place
from calrec_core.train.losses import (
    calrec_loss,
    chunked_target_nll,
    contrastive_loss,
    segment_means,
)
from calrec_core.train.schedule import learning_rate_schedule
from calrec_core.train.shapes import MAX_ROW_LEN

Params = dict[str, Any]
STEP_METRICS = ("loss", "nig", "tt", "ut", "grad_norm", "target_tokens")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam(W) with optional linear warmup and global-norm clipping."""
    schedule = learning_rate_schedule(config)
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    return optax.chain(*parts)


def _network(graphdef, params, config: TrainConfig) -> nnx.Module:
    model = nnx.merge(graphdef, params)
    if hasattr(model, "remat"):
        model.remat = config.remat  # The switch, whatever the model was built with.
    return model


def _user_tower(model: nnx.Module, batch: Batch, config: TrainConfig, nll: bool = True):
    """(summed target-token NLL, v^U (U, D), v^TU (U, D)) of one (micro)batch (R, ...)."""
    out = model(batch.tokens, batch.positions, batch.input_mask, segment_ids=batch.segment_ids)
    total = jnp.zeros((), jnp.float32)
    if nll:
        dtype, cap = model.dtype, model.config.final_logit_softcap
        total = chunked_target_nll(
            out.hidden, batch.logits_at, batch.labels, batch.label_mask, model.embedding[...],
            lambda h, w: project_logits(h, w, dtype, cap), config.logits_chunk)
    users = batch.user_mask.shape[0]
    v_user = v_target_user = None
    if config.contrastive:
        v_user = segment_means(out.hidden, batch.segment_ids, batch.history_mask, users)
        v_target_user = segment_means(out.hidden, batch.segment_ids, batch.target_mask, users)
    return total, v_user, v_target_user


def _item_tower(model: nnx.Module, batch: Batch) -> jax.Array:
    """v^T (U, D) of one (micro)batch."""
    out = model(batch.item_tokens, batch.item_positions, batch.item_mask,
                segment_ids=batch.item_segment_ids)
    users = batch.user_mask.shape[0]
    return segment_means(out.hidden, batch.item_segment_ids, batch.item_pool_mask, users)


def _nig_denominator(batch: Batch, config: TrainConfig) -> jax.Array:
    """What L_NIG's summed NLL is divided by: target tokens (token_mean) or users (Eq. 1)."""
    if config.nig_reduction == "token_mean":
        count = jnp.sum(batch.label_mask.astype(jnp.float32))
    elif config.nig_reduction == "sequence_sum":
        count = jnp.sum(batch.user_mask.astype(jnp.float32))
    else:
        raise ValueError(f"unknown reduction {config.nig_reduction!r}")
    return jnp.maximum(count, 1.0)


def loss_weights(config: TrainConfig) -> jax.Array:
    """(2,) float32 [alpha, beta] of Eq. 4: a step INPUT, not a constant of the program, so
    runs that differ only in these weights share one compiled step."""
    return jnp.asarray([config.alpha, config.beta], jnp.float32)


def _contrastive(v_item, v_target_user, v_user, config: TrainConfig, weights=None):
    """(alpha L_TT + beta L_UT, (L_TT, L_UT)) over every user given (Eqs. 2-3)."""
    weights = loss_weights(config) if weights is None else weights
    tt = contrastive_loss(v_item, v_target_user, config.contrastive_temperature)
    ut = contrastive_loss(v_item, v_user, config.contrastive_temperature)
    return weights[0] * tt + weights[1] * ut, (tt, ut)


def loss_terms(model: nnx.Module, batch: Batch, config: TrainConfig,
               weights=None) -> dict[str, jax.Array]:
    """L_NIG, L_TT, L_UT and Eq. 4's total on one (micro)batch of shape (R, ...).

    Packed and unpacked layouts give the same terms: users are pooled by segment id and the
    vocabulary projection runs at the target positions only, chunked (``logits_chunk``).
    """
    nll, v_user, v_target_user = _user_tower(model, batch, config)
    nig = nll / _nig_denominator(batch, config)
    zero = jnp.zeros((), jnp.float32)
    tt = ut = zero
    if config.contrastive:
        _, (tt, ut) = _contrastive(_item_tower(model, batch), v_target_user, v_user, config,
                                   weights)
    weights = loss_weights(config) if weights is None else weights
    total = calrec_loss(nig, tt, ut, weights[0], weights[1])
    tokens = jnp.sum(batch.label_mask.astype(jnp.float32))
    return {"loss": total, "nig": nig, "tt": tt, "ut": ut, "target_tokens": tokens}


def batch_sharding(mesh: Mesh, microbatched: bool = True) -> NamedSharding:
    """Rows over the mesh's batch axes (the rules table's "batch"), microbatch axis unsplit."""
    batch_axes = model_sharding.logical_to_spec(("batch",))[0]
    spec = PartitionSpec(None, batch_axes) if microbatched else PartitionSpec(batch_axes)
    return NamedSharding(mesh, spec)


def param_shardings(model: nnx.Module, mesh: Mesh) -> Params:
    """Pure-dict tree of NamedShardings for the model's parameters (from the rules table)."""
    return nnx.to_pure_dict(
        nnx.filter_state(model_sharding.param_shardings(model, mesh), nnx.Param)
    )


@dataclasses.dataclass
class Trainer:
    """Holds the compiled step of one model architecture on one mesh."""

    graphdef: Any  # nnx graph definition of the model (structure without arrays).
    config: TrainConfig
    mesh: Mesh
    param_sharding: Params
    optimizer: optax.GradientTransformation
    _step: Callable | None = None
    _eval: Callable | None = None
    opt_sharding: Any = None
    # Compiled steps by batch shapes, and the last compiled step's peak bytes per device.
    _compiled: dict = dataclasses.field(default_factory=dict)
    memory_bytes: int | None = None
    _gradients: Callable | None = None

    @classmethod
    def create(cls, model: nnx.Module, config: TrainConfig, mesh: Mesh) -> tuple[Trainer, Params]:
        """The trainer and the model's parameters placed on the mesh."""
        graphdef, params = nnx.split(model, nnx.Param)
        rest = nnx.state(model, nnx.Not(nnx.Param))
        if jax.tree.leaves(rest):
            raise ValueError("the model holds non-parameter state; the trainer cannot carry it")
        shardings = param_shardings(model, mesh)
        # A copy, never an alias: the step donates its parameters, the model keeps its own.
        placed = place(nnx.to_pure_dict(params), shardings)  # also across hosts
        trainer = cls(graphdef, config, mesh, shardings, make_optimizer(config))
        return trainer, placed

    def _opt_init(self, params: Params):
        """The jitted optimizer init, its outputs placed like the compiler proposes, except
        that anything it would pin to one device (step counts) is replicated on the mesh."""
        proposed = jax.jit(self.optimizer.init).lower(params).compile().output_shardings
        replicated = NamedSharding(self.mesh, PartitionSpec())
        self.opt_sharding = jax.tree.map(
            lambda sharding: sharding if isinstance(sharding, NamedSharding) else replicated,
            proposed,
        )
        return jax.jit(self.optimizer.init, out_shardings=self.opt_sharding)

    def init_optimizer(self, params: Params):
        return self._opt_init(params)(params)

    def abstract_opt_state(self, params: Params):
        """Shapes, dtypes and shardings of the optimizer state, for restoring a checkpoint."""
        self._opt_init(params)
        shapes = jax.eval_shape(self.optimizer.init, params)
        return jax.tree.map(
            lambda shape, sharding: jax.ShapeDtypeStruct(shape.shape, shape.dtype,
                                                         sharding=sharding),
            shapes, self.opt_sharding,
        )

    def model(self, params: Params) -> nnx.Module:
        return nnx.merge(self.graphdef, params)

    def _build_step(self) -> Callable:
        config, graphdef = self.config, self.graphdef
        def single(params, batch: Batch, weights):
            def loss_fn(params):
                terms = loss_terms(_network(graphdef, params, config), batch, config, weights)
                return terms["loss"], terms

            (_, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
            return grads, terms

        def two_pass(params, batch: Batch, weights):
            nig_weight = 1.0 - weights[0] - weights[1]
            denominator = _nig_denominator(batch, config)  # Of the whole step.
            tt = ut = contrastive = jnp.zeros((), jnp.float32)
            cotangents = None
            if config.contrastive:
                def embed(_, part: Batch):  # Pass 1: forward only, nothing kept.
                    model = _network(graphdef, params, config)
                    _, v_user, v_target_user = _user_tower(model, part, config, nll=False)
                    return None, (v_user, v_target_user, _item_tower(model, part))

                _, vectors = jax.lax.scan(embed, None, batch)  # 3 x (A, U, D)
                flat = [v.reshape(-1, v.shape[-1]) for v in vectors]  # 3 x (A * U, D)
                (contrastive, (tt, ut)), grads = jax.value_and_grad(
                    lambda u, tu, t: _contrastive(t, tu, u, config, weights), argnums=(0, 1, 2),
                    has_aux=True)(*flat)
                cotangents = tuple(g.reshape(v.shape) for g, v in zip(grads, vectors, strict=True))

            def objective(params, part: Batch, part_cotangents):
                model = _network(graphdef, params, config)
                nll, v_user, v_target_user = _user_tower(model, part, config)
                value = nig_weight * nll / denominator
                if part_cotangents is not None:
                    g_user, g_target_user, g_item = part_cotangents
                    # d/dparams of <dL/dv, v(params)> is dL/dv . dv/dparams (the chain rule).
                    value += (jnp.sum(g_user * v_user) + jnp.sum(g_target_user * v_target_user)
                              + jnp.sum(g_item * _item_tower(model, part)))
                return value, nll

            grad_fn = jax.grad(objective, has_aux=True)

            def accumulate(carry, xs):  # Pass 2: forward + backward per microbatch.
                grads_sum, nll_sum = carry
                part, part_cotangents = xs
                grads, nll = grad_fn(params, part, part_cotangents)
                return (jax.tree.map(jnp.add, grads_sum, grads), nll_sum + nll), None

            zero_grads = jax.tree.map(jnp.zeros_like, params)
            (grads, nll), _ = jax.lax.scan(
                accumulate, (zero_grads, jnp.zeros((), jnp.float32)), (batch, cotangents))
            nig = nll / denominator
            terms = {"loss": nig_weight * nig + contrastive, "nig": nig, "tt": tt, "ut": ut,
                     "target_tokens": jnp.sum(batch.label_mask.astype(jnp.float32))}
            return grads, terms

        def gradients(params, batch: Batch, weights):
            if batch.tokens.shape[0] == 1:
                return single(params, jax.tree.map(lambda a: a[0], batch), weights)
            return two_pass(params, batch, weights)

        self._gradients = gradients

        def step(params, opt_state, batch: Batch, weights):
            grads, metrics = gradients(params, batch, weights)
            metrics = dict(metrics)
            metrics["grad_norm"] = optax.tree.norm(grads)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, metrics

        data = batch_sharding(self.mesh)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(
            step,
            in_shardings=(self.param_sharding, self.opt_sharding, data, replicated),
            out_shardings=(self.param_sharding, self.opt_sharding, replicated),
            donate_argnums=(0, 1),
        )

    def compiled_step(self, params: Params, opt_state, batch: Batch):
        """The step compiled for this batch's shapes, its memory checked before it ever runs."""
        if self._step is None:
            self._step = self._build_step()
        key = tuple((array.shape, str(array.dtype)) for array in batch)
        if key not in self._compiled:
            with jax.set_mesh(self.mesh):
                compiled = self._step.lower(params, opt_state, batch,
                                            loss_weights(self.config)).compile()
            self.memory_bytes = compiled_bytes(compiled)
            budget = device_memory_budget(self.config)
            if budget and self.memory_bytes and self.memory_bytes > budget:
                shape = "x".join(map(str, batch.tokens.shape))
                raise MemoryError(
                    f"the step on a {shape} batch needs {self.memory_bytes / 2**30:.1f} GiB per "
                    f"device, over the {budget / 2**30:.1f} GiB budget: raise microbatches "
                    "(or set 0 for auto), or set remat=true")
            self._compiled[key] = compiled
        return self._compiled[key]

    def gradients(self, params: Params, batch: Batch):
        """(gradients, loss terms) of the step's objective on a microbatched batch, no update."""
        if self._step is None:
            self._step = self._build_step()
        with jax.set_mesh(self.mesh):
            return jax.jit(self._gradients)(params, batch, loss_weights(self.config))

    def train_step(self, params: Params, opt_state, batch: Batch):
        """One optimizer step on a microbatched global batch (A, R / A, ...)."""
        compiled = self.compiled_step(params, opt_state, batch)
        with jax.set_mesh(self.mesh):
            return compiled(params, opt_state, batch, loss_weights(self.config))

    def nig_sums(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Summed target-token NLL and token count of a (R, ...) batch (validation loss)."""
        if self._eval is None:
            def sums(params, batch: Batch):
                model = _network(self.graphdef, params, self.config)
                nll, _, _ = _user_tower(model, batch, self.config.replace(alpha=0.0, beta=0.0))
                return nll, jnp.sum(batch.label_mask.astype(jnp.float32))

            self._eval = jax.jit(
                sums, in_shardings=(self.param_sharding, batch_sharding(self.mesh, False))
            )
        with jax.set_mesh(self.mesh):
            return self._eval(params, batch)


def compiled_bytes(compiled) -> int | None:
    """Peak device memory XLA reserves for a compiled program (None where it does not say)."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        # Deliberate: some backends cannot analyse a compiled program; the memory check is
        # then skipped (it is a guard, not a requirement), as where the device reports no limit.
        return None
    if stats is None:
        return None
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes
               - stats.alias_size_in_bytes + stats.temp_size_in_bytes)


def device_memory_budget(config: TrainConfig) -> int | None:
    """Bytes one device may use: the config's budget, else what the device reports, else None."""
    if config.device_memory_gb:
        return int(config.device_memory_gb * 1e9)
    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def estimate_step_bytes(config: TrainConfig, model: Gemma3Config, microbatches: int,
                        batch_devices: int, remat: bool, tokens_per_user: float) -> float:
    """Analytic peak bytes per device of one step (upper-bound flavoured, ~20 % slack).

    Weights, gradients, their accumulator and Adam's moments in float32, then what one
    microbatch's backward keeps: per token and layer the matmul inputs and outputs in the
    compute dtype and the float32 attention scores over the row (only each layer's input with
    remat, plus one layer's worth), one chunk of float32 logits (three copies: logits,
    softmax, cotangent) and the one-hot pooling weights.
    """
    params = model.num_params
    fixed = params * (4 * 4 + (2 if config.compute_dtype == "bfloat16" else 4)) / config.fsdp
    itemsize = 2 if config.compute_dtype == "bfloat16" else 4
    users = config.batch_size / microbatches / batch_devices
    item_len = config.max_target_len + 1
    d, f = model.embed_dim, model.mlp_dim
    heads = model.num_heads * model.head_dim + model.num_kv_heads * model.head_dim

    def per_token_layer(row: int) -> float:
        return itemsize * (8 * d + 3 * heads + 4 * f) + 8 * model.num_heads * row

    # Packed rows may be up to twice the longest sequence (calrec_core.train.shapes).
    row_len = (max(config.max_sequence_len, min(2 * config.max_sequence_len, MAX_ROW_LEN))
               if config.packing else config.max_sequence_len)
    towers = ((users * tokens_per_user, row_len),
              (users * item_len, 4 * item_len))
    activations = 0.0
    for tokens, row in towers:
        if remat:
            activations += tokens * (model.num_layers * itemsize * d + per_token_layer(row))
        else:
            activations += tokens * model.num_layers * per_token_layer(row)
    chunk = min(config.logits_chunk / batch_devices, users * config.max_target_len)
    logits = 3 * 4 * chunk * model.vocab_size
    pooling = 4 * users * tokens_per_user * config.batch_size / microbatches
    return 1.2 * (fixed + activations + logits + pooling)


def model_config_of(config: TrainConfig) -> Gemma3Config:
    if config.model == "tiny":
        from calrec_core.train.models import TINY_VOCAB

        return Gemma3Config.tiny(vocab_size=TINY_VOCAB)
    return Gemma3Config.gemma3_270m()


def resolve_microbatches(config: TrainConfig, mesh: Mesh, tokens_per_user: float | None = None,
                         budget: float | None = None) -> TrainConfig:
    """``config`` with microbatches=0 replaced by the fewest that fit the memory budget.

    tokens_per_user: the computed (padded) user-tower tokens per user; None = the worst case,
    every user at max_sequence_len. Remat is switched on only if no microbatch count fits
    without it. Without any budget (CPU) the whole batch is one microbatch.
    """
    if config.microbatches:
        return config
    budget = budget or device_memory_budget(config)
    devices = model_sharding.batch_multiple(mesh)
    counts = [a for a in range(1, config.batch_size + 1)
              if config.batch_size % a == 0 and (config.batch_size // a) % devices == 0]
    if not counts:
        raise ValueError(f"batch_size {config.batch_size} does not split over {devices} devices")
    if not budget:
        return config.replace(microbatches=counts[0])
    tokens = tokens_per_user or float(config.max_sequence_len)
    model = model_config_of(config)
    for remat in sorted({config.remat, True}):
        for count in counts:
            if estimate_step_bytes(config, model, count, devices, remat, tokens) <= budget:
                return config.replace(microbatches=count, remat=remat)
    raise MemoryError(f"no microbatch count fits {budget / 2**30:.1f} GiB per device, "
                      "even one user per device with remat")

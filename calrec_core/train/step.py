"""One optimizer step: both towers, the three loss terms, gradient accumulation, the update.

Parameters and optimizer state are plain nested dicts of arrays (``nnx.to_pure_dict``), placed
on the mesh by the model's logical-axis rules; the step is one ``jax.jit`` with explicit
shardings, so the same code runs on 1 CPU, 8 fake CPU devices, a GPU or a TPU slice.
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
from calrec_core.train.batching import Batch
from calrec_core.train.config import TrainConfig
from calrec_core.train.losses import calrec_loss, contrastive_loss, masked_mean, nig_loss

Params = dict[str, Any]
METRIC_NAMES = ("loss", "nig", "tt", "ut", "grad_norm", "target_tokens")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam(W) with optional linear warmup and global-norm clipping."""
    if config.warmup_steps:
        schedule = optax.linear_schedule(0.0, config.learning_rate, config.warmup_steps)
    else:
        schedule = optax.constant_schedule(config.learning_rate)
    parts = []
    if config.grad_clip_norm:
        parts.append(optax.clip_by_global_norm(config.grad_clip_norm))
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    return optax.chain(*parts)


def loss_terms(model: nnx.Module, batch: Batch, config: TrainConfig) -> dict[str, jax.Array]:
    """L_NIG, L_TT, L_UT and Eq. 4's total on one (micro)batch of shape (B, ...)."""
    out = model(batch.tokens, batch.positions, batch.input_mask, logits_at=batch.logits_at)
    nig = nig_loss(out.logits, batch.labels, batch.label_mask, config.nig_reduction)
    zero = jnp.zeros((), jnp.float32)
    tt = ut = zero
    if config.contrastive:
        item_out = model(batch.item_tokens, batch.item_positions, batch.item_mask)
        v_item = masked_mean(item_out.hidden, batch.item_pool_mask)  # (B, D) v^T
        v_target_user = masked_mean(out.hidden, batch.target_mask)  # (B, D) v^TU
        v_user = masked_mean(out.hidden, batch.history_mask)  # (B, D) v^U
        tt = contrastive_loss(v_item, v_target_user, config.temperature)
        ut = contrastive_loss(v_item, v_user, config.temperature)
    total = calrec_loss(nig, tt, ut, config.alpha, config.beta)
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

    @classmethod
    def create(cls, model: nnx.Module, config: TrainConfig, mesh: Mesh) -> tuple[Trainer, Params]:
        """The trainer and the model's parameters placed on the mesh."""
        graphdef, params = nnx.split(model, nnx.Param)
        rest = nnx.state(model, nnx.Not(nnx.Param))
        if jax.tree.leaves(rest):
            raise ValueError("the model holds non-parameter state; the trainer cannot carry it")
        shardings = param_shardings(model, mesh)
        # A copy, never an alias: the step donates its parameters, the model keeps its own.
        placed = jax.device_put(nnx.to_pure_dict(params), shardings, may_alias=False)
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
        config = self.config

        def micro_loss(params, micro: Batch):
            terms = loss_terms(nnx.merge(self.graphdef, params), micro, config)
            return terms["loss"], terms

        grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

        def step(params, opt_state, batch: Batch):
            # Average gradients and metrics over the microbatches (axis 0 of every array).
            def accumulate(carry, micro):
                grads_sum, metrics_sum = carry
                (_, terms), grads = grad_fn(params, micro)
                grads_sum = jax.tree.map(jnp.add, grads_sum, grads)
                metrics_sum = jax.tree.map(jnp.add, metrics_sum, terms)
                return (grads_sum, metrics_sum), None

            zero_grads = jax.tree.map(jnp.zeros_like, params)
            zero_metrics = {name: jnp.zeros((), jnp.float32)
                            for name in ("loss", "nig", "tt", "ut", "target_tokens")}
            (grads, metrics), _ = jax.lax.scan(accumulate, (zero_grads, zero_metrics), batch)
            count = batch.tokens.shape[0]
            grads = jax.tree.map(lambda g: g / count, grads)
            metrics = {name: value / count for name, value in metrics.items()}
            metrics["target_tokens"] = metrics["target_tokens"] * count
            metrics["grad_norm"] = optax.tree.norm(grads)
            updates, opt_state = self.optimizer.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return params, opt_state, metrics

        data = batch_sharding(self.mesh)
        replicated = NamedSharding(self.mesh, PartitionSpec())
        return jax.jit(
            step,
            in_shardings=(self.param_sharding, self.opt_sharding, data),
            out_shardings=(self.param_sharding, self.opt_sharding, replicated),
            donate_argnums=(0, 1),
        )

    def train_step(self, params: Params, opt_state, batch: Batch):
        """One optimizer step on a microbatched global batch (A, B / A, ...)."""
        if self._step is None:
            self._step = self._build_step()
        with jax.set_mesh(self.mesh):
            return self._step(params, opt_state, batch)

    def nig_sums(self, params: Params, batch: Batch) -> tuple[jax.Array, jax.Array]:
        """Summed target-token NLL and token count of a (B, ...) batch (validation loss)."""
        if self._eval is None:
            def sums(params, batch: Batch):
                model = nnx.merge(self.graphdef, params)
                out = model(batch.tokens, batch.positions, batch.input_mask,
                            logits_at=batch.logits_at)
                tokens = jnp.sum(batch.label_mask.astype(jnp.float32))
                return nig_loss(out.logits, batch.labels, batch.label_mask) * tokens, tokens

            self._eval = jax.jit(
                sums, in_shardings=(self.param_sharding, batch_sharding(self.mesh, False))
            )
        with jax.set_mesh(self.mesh):
            return self._eval(params, batch)

"""Stage I (multi-category joint fine-tuning) and Stage II (category-specific fine-tuning).

Both stages run the same resumable loop: draw step s's batch, take one optimizer step, log
each loss term, evaluate for model selection every ``eval_every`` steps and export the best
model so far, save a resumable checkpoint every ``checkpoint_every`` steps. A run restarted
in the same output folder resumes from its newest checkpoint and repeats the uninterrupted
run's losses exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from calrec_core import storage
from calrec_core.folder_lock import folder_lock
from calrec_core.model.export import (
    architecture_of,
    check_same_architecture,
    export_trained,
    load_trained,
    read_model_info,
)
from calrec_core.train.batching import ExampleEncoder, padding_fraction
from calrec_core.train.checkpoint import (
    CheckpointStore,
    abstract_like,
    check_same_inputs,
    stage_inputs,
)
from calrec_core.train.config import TrainConfig
from calrec_core.train.distributed import initialize
from calrec_core.train.examples import (
    MixtureSampler,
    category_roles,
    load_training_sequences,
    validation_examples,
)
from calrec_core.train.metrics import MetricsLog, plot_losses
from calrec_core.train.models import fresh_model
from calrec_core.train.step import Trainer, batch_sharding, resolve_microbatches
from calrec_core.train.stream import (
    BatchStream,
    replicated_to_global,
    to_global,
    validation_batches,
)

logger = logging.getLogger(__name__)

SELECTED_DIR = "selected"
CHECKPOINTS_DIR = "checkpoints"
LOSS_PLOT = "losses.png"
# The only settings a resumed run may change: how it runs or is observed, not what it computes
# (run length, checkpoint and log cadence, memory levers). Every other TrainConfig field (the
# learning rate and its schedule included) must match the checkpoint, or the resumed steps
# would differ from the uninterrupted run's.
RESUME_FREE = ("stage1_steps", "stage2_steps", "checkpoint_every", "max_checkpoints",
               "log_every", "device_memory_gb", "logits_chunk", "remat", "fsdp")


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What a stage produced: the selected (exported) model and how it was chosen."""

    checkpoint_dir: str  # Exported selected model; pass it to load_trained or run_stage2.
    selected_step: int  # Optimizer step of the selected model.
    best_metric: float  # Its selection metric (ndcg@10_pes: higher; valid_loss: lower).
    metric_name: str  # "ndcg@10_pes" or "valid_loss" (after any fallback).
    history: tuple[dict[str, Any], ...]  # Every selection evaluation: step, value, per category.
    run_dir: str  # The run's folder (metrics.jsonl, losses.png, checkpoints/, selected/).


def run_stage1(data_dir, output_dir, config: TrainConfig, eval_config=None) -> StageResult:
    """Stage I: every category's training data at the mixture weights (|U|^0.3).

    Selection uses the validation-role categories, or, when there is none (as in the bundled
    sample), the mean over the eval categories' validation splits. ``eval_config`` (an
    EvalConfig; None: the preset ``config.eval_preset``) sets how selection evaluates.
    """
    from calrec_core.data import load_mixture

    mixture = load_mixture(data_dir)
    weights = {name: float(weight) for name, weight in mixture["weights"].items()}
    if not weights:
        raise ValueError(f"{data_dir}: the mixture names no categories")
    roles = category_roles(data_dir, sorted(weights))
    selection = [name for name, role in roles.items() if role == "validation"]
    selection = selection or [name for name, role in roles.items() if role == "eval"]
    if not selection:
        raise ValueError(f"{data_dir}: no validation or eval category to select Stage I on")
    return _run_stage("stage1", data_dir, output_dir, config, weights, selection,
                      config.stage1_steps, init_checkpoint=None, eval_config=eval_config)


def run_stage2(data_dir, category: str, init_checkpoint, output_dir,
               config: TrainConfig, eval_config=None) -> StageResult:
    """Stage II: fine-tune on ``category`` alone from ``init_checkpoint`` (a Stage I export;
    None = the "w/o Stage I" ablation, from the pretrained weights), select on its valid split."""
    roles = category_roles(data_dir, [category])
    if roles[category] != "eval":
        raise ValueError(f"category {category!r} has no valid/test splits: it is not an eval "
                         "category of this data folder")
    return _run_stage("stage2", data_dir, output_dir, config, {category: 1.0}, [category],
                      config.stage2_steps, init_checkpoint=init_checkpoint,
                      eval_config=eval_config)


def _start_model(config: TrainConfig, init_checkpoint):
    if init_checkpoint is None:
        return fresh_model(config)
    info = read_model_info(init_checkpoint)
    if info.get("model") != config.model:
        raise ValueError(f"{init_checkpoint} holds a {info.get('model')!r} model but the config "
                         f"trains {config.model!r}")
    return load_trained(init_checkpoint, compute_dtype=config.compute_dtype, remat=config.remat)


def _check_mesh(config: TrainConfig, mesh) -> None:
    devices = mesh.shape["data"] * mesh.shape["fsdp"]
    per_micro = config.batch_size // max(config.microbatches, 1)  # 0 = auto, resolved later.
    if per_micro % devices:
        raise ValueError(
            f"batch_size {config.batch_size} / microbatches {config.microbatches} = {per_micro} "
            f"users per microbatch do not split over {devices} devices (data x fsdp)"
        )


def _run_stage(stage: str, data_dir, output_dir, config: TrainConfig, weights: dict[str, float],
               selection: Sequence[str], total_steps: int, init_checkpoint,
               eval_config=None) -> StageResult:
    # Joins the other hosts of a multi-host job (no-op alone, or when the CLI already did).
    initialize()
    # One run per folder; the processes of one job share it, process 0 holds it for them.
    with folder_lock(output_dir, stage, enabled=jax.process_index() == 0):
        return _run_stage_locked(stage, data_dir, output_dir, config, weights, selection,
                                 total_steps, init_checkpoint, eval_config)


def _run_stage_locked(stage: str, data_dir, output_dir, config: TrainConfig,
                      weights: dict[str, float], selection: Sequence[str], total_steps: int,
                      init_checkpoint, eval_config=None) -> StageResult:
    from calrec_core.model.sharding import batch_multiple, make_mesh

    run_dir = storage.path(output_dir)  # local or gs://
    mesh = make_mesh(data=-1, fsdp=config.fsdp)
    _check_mesh(config, mesh)
    sequences = load_training_sequences(data_dir, sorted(weights))
    model, tokenizer = _start_model(config, init_checkpoint)
    architecture = architecture_of(model)
    sampler = MixtureSampler(sequences, weights, seed=config.seed, stream=stage,
                             max_drop_last=config.max_drop_last)
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    stream = BatchStream(sampler, encoder, config, row_multiple=batch_multiple(mesh))
    if not config.microbatches:  # Auto: sized from a memory estimate before step 1.
        config = resolve_microbatches(config, mesh, stream.tokens_per_user(0))
        _check_mesh(config, mesh)
        logger.info("%s: %d microbatches, remat=%s", stage, config.microbatches, config.remat)
        stream = BatchStream(sampler, encoder, config, row_multiple=batch_multiple(mesh))
    trainer, params = Trainer.create(model, config, mesh)
    inputs = stage_inputs(data_dir, weights, selection, params)
    selector = _Selector(config, data_dir, selection, trainer, tokenizer, encoder, eval_config)

    store = CheckpointStore(run_dir / CHECKPOINTS_DIR, config.max_checkpoints)
    start = store.latest_step() or 0
    if start:
        record = store.read_record(start)
        check_same_architecture(architecture, record["architecture"],
                                f"checkpoint {run_dir / CHECKPOINTS_DIR}/{start}")
        if record["stage"] != stage or record["seed"] != config.seed:
            raise ValueError(f"{run_dir} holds a checkpoint of {record['stage']} with seed "
                             f"{record['seed']}; this run is {stage} with seed {config.seed}")
        recorded = record["train_config"]  # a field newer than the record is not compared
        # Compared as the record reads back from JSON (a tuple setting comes back a list).
        current = json.loads(json.dumps(config.to_dict()))
        changed = [name for name, value in current.items()
                   if name not in RESUME_FREE and name in recorded and recorded[name] != value]
        if changed:
            raise ValueError(f"{run_dir}: cannot resume with other {changed} than the "
                             "checkpointed run (its steps would differ); use a new output folder")
        check_same_inputs(record.get("inputs"), inputs, run_dir)
        params, opt_state, record = store.restore(
            start, abstract_like(params), trainer.abstract_opt_state(params))
        selector.load(record["selection"])
        logger.info("%s: resumed from step %d", stage, start)
    else:
        opt_state = trainer.init_optimizer(params)
    del model
    init_name = None if init_checkpoint is None else str(init_checkpoint)
    log = MetricsLog(run_dir, resume_step=start, enabled=jax.process_index() == 0)
    data_sharding = batch_sharding(mesh)
    if config.packing:  # The step shapes, planned before the first step is timed.
        began = time.perf_counter()
        logger.info("%s: step shapes %s (%.1f s)", stage, stream.ladder.describe(),
                    time.perf_counter() - began)
    progress = tqdm(range(start, total_steps), desc=stage, initial=start, total=total_steps,
                    disable=jax.process_index() != 0)
    for step in progress:
        began = time.perf_counter()
        local = stream.local_batch(step)
        batch = to_global(local, data_sharding)
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch)
        done = step + 1
        if done % config.log_every == 0 or done == total_steps:
            values = {name: float(value) for name, value in jax.device_get(metrics).items()}
            if not all(math.isfinite(values[name]) for name in ("loss", "nig", "tt", "ut")):
                raise FloatingPointError(f"{stage} step {done}: non-finite loss {values}")
            seconds = time.perf_counter() - began
            # Real (unpadded) tokens through the user tower per second of this step.
            real_tokens = int(local.input_mask.sum()) * jax.process_count()
            values["tokens_per_s"] = real_tokens / seconds
            values["padding_fraction"] = padding_fraction(local)
            log.write("train", done, contrastive=config.contrastive, seconds=seconds, **values)
            progress.set_postfix(loss=f"{values['loss']:.3f}", nig=f"{values['nig']:.3f}")
        if done % config.eval_every == 0 or done == total_steps:
            improved = selector.evaluate(done, params, log)
            # Export (atomic: a temporary folder renamed into place) BEFORE the checkpoint: a
            # kill between the two resumes from the previous checkpoint, which replays this
            # step and re-exports the same model. The other order could leave a checkpoint
            # whose selection state names a best step that was never exported.
            if improved:
                export_trained(run_dir / SELECTED_DIR, params, trainer.model(params), tokenizer,
                               config.model, {"train_config": config.to_dict(), "stage": stage,
                                              "step": done, "init": init_name,
                                              "inputs": inputs,
                                              "selection": selector.state()})
        if done % config.checkpoint_every == 0 or done == total_steps:
            store.save(done, params, opt_state, {
                "step": done, "stage": stage, "seed": config.seed, "stream": stage,
                "architecture": architecture, "selection": selector.state(), "init": init_name,
                "train_config": config.to_dict(), "inputs": inputs,
            })
    store.close()
    log.close()
    if jax.process_index() == 0:
        plot_losses([run_dir], run_dir / LOSS_PLOT, labels=[stage])
    if selector.best_step is None:
        raise RuntimeError(f"{stage}: no selection evaluation ran (total_steps={total_steps})")
    return StageResult(
        checkpoint_dir=str(run_dir / SELECTED_DIR), selected_step=selector.best_step,
        best_metric=selector.best_value, metric_name=selector.metric,
        history=tuple(selector.history), run_dir=str(run_dir),
    )


class _Selector:
    """Evaluates for model selection and remembers the best step (state kept in checkpoints).

    ndcg@10_pes (§4: selection on the pessimistic NDCG@10): CALRec's generate-and-fuse
    evaluation of the full catalog on a fixed sample of validation users, drawn once per
    category from the seed (at most ``eval_max_users``), so every evaluation of a run, resumed
    or not, scores the same users; decoding is split over the trainer's mesh.
    """

    def __init__(self, config: TrainConfig, data_dir, categories: Sequence[str],
                 trainer: Trainer, tokenizer, encoder: ExampleEncoder, eval_config=None) -> None:
        self.config = config
        self.eval_config = eval_config  # None: EvalConfig.preset(config.eval_preset)
        self.data_dir = data_dir
        self.categories = list(categories)
        self.trainer = trainer
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.metric = config.selection_metric
        if self.metric == "ndcg@10_pes":
            try:
                from calrec_core.eval import evaluate_split  # noqa: F401
            except ImportError as error:
                logger.warning("calrec_core.eval unavailable (%s): selecting on valid_loss", error)
                self.metric = "valid_loss"
        self.best_step: int | None = None
        self.best_value = math.nan
        self.history: list[dict[str, Any]] = []
        self._valid_batches: dict[str, list] | None = None
        self._ranking: dict[str, tuple] = {}  # category -> (catalog, fixed user sample)

    def state(self) -> dict[str, Any]:
        return {"metric": self.metric, "best_step": self.best_step,
                "best_value": self.best_value, "history": self.history}

    def load(self, state: dict[str, Any]) -> None:
        self.metric = state["metric"]
        self.best_step = state["best_step"]
        self.best_value = float(state["best_value"])
        self.history = list(state["history"])

    def _better(self, value: float) -> bool:
        if self.best_step is None:
            return True
        if self.metric == "valid_loss":
            return value < self.best_value
        return value > self.best_value

    def evaluate(self, step: int, params, log: MetricsLog) -> bool:
        per_category = {name: self._score(name, params) for name in self.categories}
        value = float(np.mean(list(per_category.values())))
        self.history.append({"step": step, "value": value, "categories": per_category})
        log.write("eval", step, metric=self.metric, value=value, categories=per_category)
        if self._better(value):
            self.best_step, self.best_value = step, value
            return True
        return False

    def _score(self, category: str, params) -> float:
        if self.metric == "valid_loss":
            return self._valid_loss(category, params)
        return float(self._ranking_metrics(category, params)["ndcg@10_pes"])

    def _ranking_metrics(self, category: str, params) -> dict[str, float]:
        """Mean evaluation metrics of the model on the category's fixed validation sample."""
        from calrec_core.eval import EvalConfig
        from calrec_core.eval.evaluate import score_users, summarize
        from calrec_core.eval.generation import ItemGenerator

        base = self.eval_config or EvalConfig.preset(self.config.eval_preset)
        # The users are this run's own fixed sample (eval_max_users), not the test cap.
        eval_config = dataclasses.replace(base, max_users=None).with_training_budget(
            self.config.max_input_len)
        if category not in self._ranking:
            from calrec_core.eval.catalog import load_catalog

            users = self.selection_sample(self.data_dir, category,
                                          self.config.eval_max_users, self.config.seed)
            if not users:
                raise ValueError(f"category {category!r} has no validation users")
            self._ranking[category] = (load_catalog(self.data_dir, category, eval_config), users)
        catalog, users = self._ranking[category]
        generator = ItemGenerator(self.trainer.model(params), self.tokenizer, eval_config,
                                  mesh=self.trainer.mesh)
        rows = score_users(users, catalog, ["calrec"], eval_config, generator=generator)["calrec"]
        return summarize(rows)

    @staticmethod
    def selection_sample(data_dir, category: str, max_users: int, seed: int) -> list[dict]:
        """The category's validation examples, or (max_users > 0) a uniform sample of that
        many drawn from the seed and the category name: the same users on every call."""
        from calrec_core.data import read_examples
        from calrec_core.user_sample import sample_users

        return sample_users(read_examples(data_dir, category, "valid"), max_users, seed,
                            category)

    def _valid_loss(self, category: str, params) -> float:
        if self._valid_batches is None:
            self._valid_batches = {}
        if category not in self._valid_batches:
            pairs = validation_examples(self.data_dir, category, self.config.eval_max_users,
                                        self.config.seed)
            if not pairs:
                raise ValueError(f"category {category!r} has no validation users")
            rows = self.config.batch_size // self.config.microbatches
            sharding = batch_sharding(self.trainer.mesh, microbatched=False)
            self._valid_batches[category] = [
                replicated_to_global(batch, sharding)
                for batch in validation_batches(pairs, self.encoder, self.config, rows)
            ]
        total = count = 0.0
        for batch in self._valid_batches[category]:
            nll, tokens = self.trainer.nig_sums(params, batch)
            total += float(nll)
            count += float(tokens)
        return total / max(count, 1.0)

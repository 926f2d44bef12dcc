"""Training configuration: one frozen dataclass with named presets (tiny, demo, paper)."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterable

from calrec_core.overrides import apply_section_overrides, check_preset

LR_SCHEDULES = ("constant", "cosine", "linear")  # After warmup (see calrec_core.train.schedule).


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a Stage I or Stage II run needs besides its data and output folders."""

    # Which network to fine-tune: "tiny" (random tiny Gemma 3, tiny tokenizer) or "gemma3_270m"
    # (the real pretrained weights and tokenizer).
    model: str = "gemma3_270m"
    # Users per optimizer step (the paper's N_b = 512), summed over all devices and hosts.
    batch_size: int = 512
    # Gradient-accumulation slices per step (0 = as few as fit device_memory_gb). The contrastive
    # losses still use all batch_size users as in-batch negatives (a two-pass step).
    microbatches: int = 1
    # Device memory budget in GB for microbatches=0 and the check before each new step shape
    # (0 = what the device reports, or no check where it reports nothing, as on the CPU).
    device_memory_gb: float = 0.0
    # Pack several users into each row (segment ids, per-user pooling) instead of one row each.
    packing: bool = False
    # Target positions projected onto the vocabulary at once (bounds the float32 logits).
    logits_chunk: int = 2048
    # Adam learning rate (the paper: 1e-4), constant after warmup.
    learning_rate: float = 1e-4
    # Linear warmup steps up to learning_rate (step s of them at (s + 1) / warmup_steps of it).
    warmup_steps: int = 0
    # After warmup: "constant" (the paper), "cosine" or "linear" decay (calrec_core.train.schedule).
    lr_schedule: str = "constant"
    # Steps over which "cosine"/"linear" decay after warmup (held at the final value after).
    lr_decay_steps: int = 0
    # Learning rate at the end of the decay, as a fraction of learning_rate.
    lr_final_ratio: float = 0.0
    # Decoupled weight decay of AdamW (0 = plain Adam).
    weight_decay: float = 0.0
    # Gradients are clipped to this global norm (0 = no clipping).
    grad_clip_norm: float = 1.0
    # Weight alpha of L_TT in Eq. 4 (the paper: 0.125; 0 with beta = 0 is the "w/o contrastive"
    # ablation, which also skips the item tower).
    alpha: float = 0.125
    # Weight beta of L_UT in Eq. 4 (the paper: -0.025, negative on purpose).
    beta: float = -0.025
    # Run the item tower and the contrastive terms even with alpha = beta = 0 (they then weigh
    # nothing): the "w/o contrastive" ablation then shares the contrastive run's compiled step
    # (alpha and beta are step inputs), which saves its compiles in a budgeted experiment.
    shared_program: bool = False
    # Packed step shapes to use instead of planning them from this run's stream: one
    # (rows, seq_len, item_rows, item_len, target_len) per packed level (calrec_core.train.
    # shapes). An experiment gives every stage run the same ones, so runs share compiles.
    step_shapes: tuple[tuple[int, ...], ...] = ()
    # Contrastive temperature tau_c of Eqs. 2-3.
    contrastive_temperature: float = 0.5
    # How L_NIG is averaged: "token_mean" (mean cross-entropy over all target tokens of the batch,
    # the usual LM-loss normalisation) or "sequence_sum" (Eq. 1 literally: per-user sum, then mean).
    nig_reduction: str = "token_mean"
    # Longest prompt in tokens, BOS included (oldest history items are dropped whole to fit).
    max_input_len: int = 1024
    # Longest target in tokens, EOS included.
    max_target_len: int = 80
    # Augmentation: drop the last k items, k uniform in {0, ..., max_drop_last}.
    max_drop_last: int = 4
    # Full sequences are padded up to a multiple of this many tokens (few shapes, few compiles).
    length_bucket: int = 128
    # Optimizer steps of Stage I (multi-category joint fine-tuning).
    stage1_steps: int = 150_000
    # Optimizer steps of each Stage II run (category-specific fine-tuning); the paper does not
    # state it, selection on the validation split picks the step.
    stage2_steps: int = 30_000
    # Evaluate for model selection every this many steps (and after the last step).
    eval_every: int = 5_000
    # Save a resumable checkpoint every this many steps (and after the last step).
    checkpoint_every: int = 5_000
    # Resumable checkpoints kept on disk (the selected model is exported separately).
    max_checkpoints: int = 2
    # Write a metrics line (each loss term) every this many steps.
    log_every: int = 100
    # Seed of the batch sampler and of the random parameters of the tiny model.
    seed: int = 0
    # Dtype of the forward/backward compute; master weights and optimizer state stay float32.
    compute_dtype: str = "float32"
    # Selection metric: "ndcg@10_pes" (the paper's rule, needs calrec_core.eval) or "valid_loss"
    # (L_NIG on validation users; also the fallback when the eval package is missing).
    selection_metric: str = "ndcg@10_pes"
    # Name of the EvalConfig preset used for selection evaluations.
    eval_preset: str = "paper"
    # At most this many validation users per selection evaluation (0 = all of them): a uniform
    # sample drawn once from the seed, the same users at every evaluation of the run.
    eval_max_users: int = 0
    # Recompute each layer's activations in the backward pass (less memory, more compute).
    remat: bool = False
    # Size of the fsdp mesh axis (parameters sharded over it); the data axis takes the rest.
    fsdp: int = 1

    def __post_init__(self) -> None:
        problems = []
        if self.model not in ("tiny", "gemma3_270m"):
            problems.append(f"model must be 'tiny' or 'gemma3_270m', got {self.model!r}")
        if self.batch_size < 2:
            problems.append("batch_size must be at least 2 (in-batch negatives)")
        if self.microbatches < 0 or (self.microbatches and self.batch_size % self.microbatches):
            problems.append(
                f"batch_size {self.batch_size} is not divisible by microbatches {self.microbatches}"
            )
        if self.lr_schedule not in LR_SCHEDULES:
            problems.append(f"lr_schedule must be one of {LR_SCHEDULES}: {self.lr_schedule!r}")
        elif self.lr_schedule != "constant" and self.lr_decay_steps < 1:
            problems.append(f"lr_schedule {self.lr_schedule!r} needs lr_decay_steps >= 1")
        if self.warmup_steps < 0 or not 0.0 <= self.lr_final_ratio <= 1.0:
            problems.append("warmup_steps must be >= 0 and lr_final_ratio in [0, 1]")
        if self.nig_reduction not in ("token_mean", "sequence_sum"):
            problems.append(f"unknown nig_reduction {self.nig_reduction!r}")
        if self.compute_dtype not in ("float32", "bfloat16"):
            problems.append(f"compute_dtype must be float32 or bfloat16: {self.compute_dtype!r}")
        if self.selection_metric not in ("ndcg@10_pes", "valid_loss"):
            problems.append(f"unknown selection_metric {self.selection_metric!r}")
        if self.contrastive_temperature <= 0:
            problems.append("contrastive_temperature must be positive")
        if self.max_input_len < 8 or self.max_target_len < 2:
            problems.append("max_input_len must be >= 8 and max_target_len >= 2")
        if self.max_drop_last < 0:
            problems.append("max_drop_last must be >= 0")
        for name in ("stage1_steps", "stage2_steps", "eval_every", "checkpoint_every", "log_every",
                     "max_checkpoints", "length_bucket", "fsdp", "logits_chunk"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    @property
    def contrastive(self) -> bool:
        """Whether the item tower runs at all (skipped for alpha = beta = 0 unless
        shared_program)."""
        return self.alpha != 0.0 or self.beta != 0.0 or self.shared_program

    @property
    def max_sequence_len(self) -> int:
        return self.max_input_len + self.max_target_len

    def replace(self, **changes: typing.Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def with_overrides(self, assignments: Iterable[str]) -> TrainConfig:
        """Applies ``train.field=value`` (or bare ``field=value``) strings, the CLI's ``--set``."""
        return apply_section_overrides(self, assignments, "train")

    def to_dict(self) -> dict[str, typing.Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, typing.Any]) -> TrainConfig:
        known = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    @classmethod
    def tiny(cls) -> TrainConfig:
        """Random tiny model on the bundled sample: seconds per stage, for tests."""
        return cls(
            model="tiny", batch_size=16, microbatches=2, learning_rate=3e-3, max_input_len=320,
            max_target_len=96, length_bucket=416, stage1_steps=6, stage2_steps=4, eval_every=3,
            checkpoint_every=3, log_every=1, selection_metric="valid_loss", eval_preset="tiny",
            eval_max_users=16,
        )

    @classmethod
    def demo(cls) -> TrainConfig:
        """Real Gemma 3 270M, a few steps per stage, one padded shape (one compile per stage).

        Sized from benchmarks/bench_train.py on the shared 2-core CPU: a 4 x 304-token step
        took ~48 s after a ~110 s compile, so Stage I takes 2 steps, each Stage II 1 step, and
        selection runs once, after each stage's last step, on 4 validation users.
        """
        return cls(
            model="gemma3_270m", batch_size=4, microbatches=1, learning_rate=1e-4,
            max_input_len=256, max_target_len=48, length_bucket=304, stage1_steps=2,
            stage2_steps=1, eval_every=2, checkpoint_every=2, log_every=1,
            selection_metric="ndcg@10_pes", eval_preset="demo", eval_max_users=4, packing=True,
        )

    @classmethod
    def paper(cls) -> TrainConfig:
        """The paper's setup (§4): 512 users, lr 1e-4, 150k Stage I steps, 1024/80 tokens; on one
        accelerator: packed rows, bfloat16 compute, microbatches sized to its memory."""
        # Selection on 2,048 validation users (the paper does not say how many): ~1.5 min of
        # N_gen 32 decoding on one H200 per eval_every, instead of a whole large category.
        return cls(packing=True, compute_dtype="bfloat16", microbatches=0, eval_max_users=2048)

    @classmethod
    def preset(cls, name: str) -> TrainConfig:
        return getattr(cls, check_preset(name))()

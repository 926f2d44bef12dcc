"""Evaluation settings (CALRec §3.5 and §4 Implementation Details) with named presets."""

from __future__ import annotations

import dataclasses

from calrec_core.overrides import apply_section_overrides, check_preset

DEFAULT_PROMPT_BUDGET = 1024  # §4: 1,024 input tokens.
# Model rankings besides the paper's sampler (eval/constrained.py, eval/rerank.py).
MODEL_RANKINGS = ("calrec_constrained", "calrec_rerank")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How generations are sampled, fused with BM25 and scored."""

    sampling_temperature: float = 0.5  # Sampling temperature at inference (§4: 0.5).
    n_gen: int = 32  # Samples drawn per user (N_gen of Algorithm 1).
    n_preds: int = 10  # Unique top samples kept for BM25 matching (N_preds).
    epsilon: float = 1.0 / 5000.0  # Modulation strength of exp(epsilon * logprob).
    top_k: int = 10  # Items stored per user in predictions and returned by `recommend`.
    max_users: int | None = None  # Cap on USERS evaluated (never the catalog); None = all.
    user_batch_size: int = 8  # Users whose prompts are handed to the generator together.
    # (prompt, sample) rows decoded in one batch, split over the devices' data axis (the
    # issue's H200 measurement: 1,024 rows best; 64 suits a CPU).
    decode_batch_size: int = 64
    # Prompts are left-padded to a multiple of this many tokens: each distinct length is one
    # decode program to compile (256 on accelerators: few compiles, little wasted prefill).
    length_bucket: int = 64
    # Quality lever (the paper: False, the full catalog is ranked): leave the user's own
    # history items out of the returned top-K. Metrics are always reported both ways
    # ("ndcg@10_pes" on the full ranking, "nohist_ndcg@10_pes" with history items last).
    exclude_history: bool = False
    shard_size: int = 256  # Users per resumable shard written to disk.
    max_new_tokens: int = 80  # Maximum decoded tokens (§4: 80).
    # Prompt budget in tokens; None = the one the evaluated model was trained with (its export's
    # train_config), else §4's 1,024. Setting it decouples evaluation from training.
    max_input_len: int | None = None
    seed: int = 0  # Sampling seed; the generator derives each sample's key from it and the prompt.
    bm25_k1: float = 1.5  # BM25 term-frequency saturation (rank-bm25 default, §4).
    bm25_b: float = 0.75  # BM25 length normalisation (rank-bm25 default, §4).
    bm25_epsilon: float = 0.25  # rank-bm25's floor for negative idf, times the mean idf.
    # Model rankings evaluated beside the paper's sampler by `calrec experiment` and the
    # pipeline (MODEL_RANKINGS); `calrec evaluate` and `recommend` name them as methods.
    rankings: tuple[str, ...] = ()
    # calrec_constrained: "beam" (beam search) or "sample" (N_gen constrained samples).
    constrained_decoding: str = "beam"
    beam_width: int = 10  # calrec_constrained: beam width B (items generated per user).
    constrained_ban_history: bool = True  # calrec_constrained: never generate a history item.
    rerank_pool: int = 50  # calrec_rerank: M, the pool is LIR's top M plus the fusion's top M.
    rerank_length_norm: bool = True  # calrec_rerank: mean token log-prob (False: the sum).
    rerank_batch_size: int = 32  # calrec_rerank: candidates scored per forward pass.
    # Both model rankings: what orders the items the model did not rank, "fusion" (of the
    # method's generations) or "lir".
    rank_rest_by: str = "fusion"

    def __post_init__(self) -> None:
        if self.n_gen < 1 or self.n_preds < 1:
            raise ValueError(f"n_gen, n_preds must be positive: {self.n_gen}, {self.n_preds}")
        if self.sampling_temperature < 0:
            raise ValueError(
                f"sampling_temperature must be >= 0, got {self.sampling_temperature}")
        sizes = (self.top_k, self.user_batch_size, self.decode_batch_size, self.shard_size,
                 self.length_bucket)
        if min(sizes) < 1:
            raise ValueError("top_k, the batch and shard sizes and length_bucket must be positive")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be positive or None, got {self.max_users}")
        unknown = [r for r in self.rankings if r not in MODEL_RANKINGS]
        if unknown or len(set(self.rankings)) != len(self.rankings):
            raise ValueError(f"rankings {list(self.rankings)}: each one of {MODEL_RANKINGS}")
        if self.constrained_decoding not in ("beam", "sample"):
            raise ValueError(f"constrained_decoding must be beam or sample, got "
                             f"{self.constrained_decoding!r}")
        if self.rank_rest_by not in ("fusion", "lir"):
            raise ValueError(f"rank_rest_by must be fusion or lir, got {self.rank_rest_by!r}")
        if min(self.beam_width, self.rerank_pool, self.rerank_batch_size) < 1:
            raise ValueError("beam_width, rerank_pool and rerank_batch_size must be positive")

    @classmethod
    def paper(cls) -> EvalConfig:
        """The paper's inference settings on every user, batched for an accelerator: 256-token
        prompt buckets, 1,024 decode rows (32 users x N_gen 32) per batch."""
        return cls(user_batch_size=32, decode_batch_size=1024, length_bucket=256)

    @classmethod
    def demo(cls) -> EvalConfig:
        """Fits the CPU demo: fewer samples, shorter prompts and outputs, 8 users (a 270M
        model on 2 CPU cores takes about a minute per user at N_gen = 4)."""
        return cls(n_gen=4, n_preds=4, max_users=8, max_new_tokens=40,
                   user_batch_size=8, decode_batch_size=32, shard_size=8)

    @classmethod
    def tiny(cls) -> EvalConfig:
        """For tests: a handful of short samples on a few users; experiments also report both
        model rankings (small beams and pools)."""
        return cls(n_gen=4, n_preds=3, max_users=6, max_new_tokens=12, user_batch_size=3,
                   decode_batch_size=16, shard_size=4, max_input_len=256,
                   rankings=MODEL_RANKINGS, beam_width=3, rerank_pool=4, rerank_batch_size=8)

    @classmethod
    def preset(cls, name: str) -> EvalConfig:
        return getattr(cls, check_preset(name))()

    @property
    def prompt_budget(self) -> int:
        """Tokens a prompt may take (BOS included)."""
        return self.max_input_len or DEFAULT_PROMPT_BUDGET

    def with_training_budget(self, train_max_input_len: int | None) -> EvalConfig:
        """This config with the training run's prompt budget filled in, unless one is set."""
        if self.max_input_len is not None or not train_max_input_len:
            return self
        return dataclasses.replace(self, max_input_len=int(train_max_input_len))

    def with_overrides(self, assignments) -> EvalConfig:
        """Applies ``eval.field=value`` (or bare ``field=value``) strings, the CLI's ``--set``."""
        return apply_section_overrides(self, assignments, "eval")

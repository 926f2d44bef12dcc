"""Evaluation settings (CALRec §3.5 and §4 Implementation Details) with named presets."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """How generations are sampled, fused with BM25 and scored."""

    temperature: float = 0.5  # Sampling temperature at inference (§4: 0.5).
    n_gen: int = 32  # Samples drawn per user (N_gen of Algorithm 1).
    n_preds: int = 10  # Unique top samples kept for BM25 matching (N_preds).
    epsilon: float = 1.0 / 5000.0  # Modulation strength of exp(epsilon * logprob).
    top_k: int = 10  # Items stored per user in predictions and returned by `recommend`.
    max_users: int | None = None  # Cap on USERS evaluated (never the catalog); None = all.
    user_batch_size: int = 8  # Users whose prompts are handed to the sampler together.
    decode_batch_size: int = 64  # (prompt, sample) rows decoded in one batch by the sampler.
    shard_size: int = 256  # Users per resumable shard written to disk.
    max_new_tokens: int = 80  # Maximum decoded tokens (§4: 80).
    max_input_len: int = 1024  # Prompt budget in tokens (§4: 1,024).
    seed: int = 0  # Sampling seed; the sampler derives each sample's key from it and the prompt.
    bm25_k1: float = 1.5  # BM25 term-frequency saturation (rank-bm25 default, §4).
    bm25_b: float = 0.75  # BM25 length normalisation (rank-bm25 default, §4).
    bm25_epsilon: float = 0.25  # rank-bm25's floor for negative idf, times the mean idf.

    def __post_init__(self) -> None:
        if self.n_gen < 1 or self.n_preds < 1:
            raise ValueError(f"n_gen, n_preds must be positive: {self.n_gen}, {self.n_preds}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if min(self.top_k, self.user_batch_size, self.decode_batch_size, self.shard_size) < 1:
            raise ValueError("top_k and the batch and shard sizes must be positive")
        if self.max_users is not None and self.max_users < 1:
            raise ValueError(f"max_users must be positive or None, got {self.max_users}")

    @classmethod
    def paper(cls) -> EvalConfig:
        """The paper's inference settings on every user."""
        return cls()

    @classmethod
    def demo(cls) -> EvalConfig:
        """Fits the CPU demo: fewer samples, shorter prompts and outputs, 8 users (a 270M
        model on 2 CPU cores takes about a minute per user at N_gen = 4)."""
        return cls(n_gen=4, n_preds=4, max_users=8, max_new_tokens=40, max_input_len=512,
                   user_batch_size=8, decode_batch_size=32, shard_size=8)

    @classmethod
    def tiny(cls) -> EvalConfig:
        """For tests: a handful of short samples on a few users."""
        return cls(n_gen=4, n_preds=3, max_users=6, max_new_tokens=12, user_batch_size=3,
                   decode_batch_size=16, shard_size=4, max_input_len=256)

    @classmethod
    def preset(cls, name: str) -> EvalConfig:
        presets = {"tiny": cls.tiny, "demo": cls.demo, "paper": cls.paper}
        if name not in presets:
            raise ValueError(f"unknown eval preset {name!r}; choose from {sorted(presets)}")
        return presets[name]()

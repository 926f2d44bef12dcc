"""Gemma 3 text-decoder hyperparameters, with named presets."""

from __future__ import annotations

import dataclasses

LOCAL_ATTENTION = "sliding_attention"
GLOBAL_ATTENTION = "full_attention"


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
    """Shape and numerics of a Gemma 3 text decoder (names follow the Gemma 3 report)."""

    vocab_size: int  # Rows of the (tied) token embedding.
    embed_dim: int  # Model width d_model.
    num_layers: int  # Decoder blocks.
    num_heads: int  # Query heads.
    num_kv_heads: int  # Key/value heads shared by groups of query heads (GQA).
    head_dim: int  # Width of one attention head.
    mlp_dim: int  # Hidden width of the gated feed-forward block.
    sliding_window: int = 512  # Local layers attend to this many most recent tokens (self incl.).
    local_rope_base: float = 10_000.0  # RoPE base frequency of local (sliding) layers.
    global_rope_base: float = 1_000_000.0  # RoPE base frequency of global layers.
    global_rope_scale: float = 1.0  # Linear RoPE scaling of global layers (8 in Gemma 3 4B+).
    global_every: int = 6  # Layer i is global when (i + 1) % global_every == 0.
    # Explicit per-layer kinds (a checkpoint's `layer_types`); None -> the global_every pattern.
    layer_types: tuple[str, ...] | None = None
    rms_eps: float = 1e-6  # Epsilon inside every RMSNorm.
    query_pre_attn_scalar: float = 256.0  # Attention logits are scaled by this ** -0.5.
    final_logit_softcap: float | None = None  # tanh soft-cap on output logits (None in Gemma 3).
    max_position: int = 32_768  # Longest position the checkpoint was trained for.

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}"
            )
        if self.layer_types is not None:
            if len(self.layer_types) != self.num_layers:
                raise ValueError(
                    f"layer_types has {len(self.layer_types)} entries for {self.num_layers} layers"
                )
            unknown = set(self.layer_types) - {LOCAL_ATTENTION, GLOBAL_ATTENTION}
            if unknown:
                raise ValueError(f"unknown layer types {sorted(unknown)}")

    @property
    def num_params(self) -> int:
        """Parameters of the model (the tied embedding counted once), from the shapes alone."""
        d, f, h = self.embed_dim, self.mlp_dim, self.head_dim
        attention = d * h * (2 * self.num_heads + 2 * self.num_kv_heads) + 2 * h
        return self.vocab_size * d + self.num_layers * (attention + 3 * d * f + 4 * d) + d

    @property
    def num_non_embedding_params(self) -> int:
        """Parameters besides the token embedding (the usual N of 6 N FLOPs per token)."""
        return self.num_params - self.vocab_size * self.embed_dim

    def is_global(self, layer: int) -> bool:
        """Whether decoder layer ``layer`` attends globally (else within the sliding window)."""
        if self.layer_types is not None:
            return self.layer_types[layer] == GLOBAL_ATTENTION
        return (layer + 1) % self.global_every == 0

    @classmethod
    def tiny(cls, vocab_size: int = 512) -> Gemma3Config:
        """A few-thousand-parameter model for tests: 4 layers (the last global), window 8."""
        return cls(
            vocab_size=vocab_size,
            embed_dim=64,
            num_layers=4,
            num_heads=2,
            num_kv_heads=1,
            head_dim=16,
            mlp_dim=128,
            sliding_window=8,
            global_every=4,
            query_pre_attn_scalar=16.0,
        )

    @classmethod
    def demo(cls, vocab_size: int = 512) -> Gemma3Config:
        """A small random model that still trains to something on a laptop CPU."""
        return cls(
            vocab_size=vocab_size,
            embed_dim=128,
            num_layers=6,
            num_heads=4,
            num_kv_heads=1,
            head_dim=32,
            mlp_dim=512,
            sliding_window=64,
            query_pre_attn_scalar=32.0,
        )

    @classmethod
    def gemma3_270m(cls) -> Gemma3Config:
        """Gemma 3 270M; loading reads the config from the checkpoint, this documents it."""
        return cls(
            vocab_size=262_144,
            embed_dim=640,
            num_layers=18,
            num_heads=4,
            num_kv_heads=1,
            head_dim=256,
            mlp_dim=2048,
        )

    paper = gemma3_270m  # The paper fine-tunes PaLM-2 XXS; Gemma 3 270M is our stand-in.

"""Gemma 3 text decoder in Flax NNX.

Follows Gemma 3 (and transformers' reference): local sliding-window and global attention
layers with their own RoPE bases, grouped-query attention with q/k RMSNorm, pre- and
post-norms around attention and the feed-forward block, Gemma's RMSNorm x * (1 + w),
embeddings scaled by sqrt(d_model), tanh-GELU gated MLP and a tied output embedding.

Masks come from per-row position ids (not slot indices), so left-padded batches and the
KV cache need no special casing: padding slots carry position -1 and are never attended.
Optional segment ids let one row hold several packed sequences: a token attends only to its
own segment, and positions restart at 0 in each segment, so every sequence computes exactly
what it would alone in its own row (sliding windows included, as they count positions).
"""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from calrec_core.model.config import Gemma3Config
from calrec_core.model.sharding import constrain


def _param(rngs: nnx.Rngs, init, shape, dtype, axes: tuple[str, ...]) -> nnx.Param:
    # Logical axis names only; the mesh placement comes from sharding.LOGICAL_AXIS_RULES.
    return nnx.Param(init(rngs.params(), shape, dtype), out_sharding=axes, eager_sharding=False)


@flax.struct.dataclass
class KVCache:
    """Keys/values of every layer for a fixed number of slots, filled left to right."""

    keys: tuple[jax.Array, ...]  # Per layer (B, S, K, H), RoPE already applied.
    values: tuple[jax.Array, ...]  # Per layer (B, S, K, H).
    positions: jax.Array  # (B, S) int32 position of each slot; -1 = empty or padding.
    end: jax.Array  # () int32: slots [0, end) are written (same for every row).

    @classmethod
    def create(cls, config: Gemma3Config, batch: int, length: int, dtype=jnp.float32) -> KVCache:
        shape = (batch, length, config.num_kv_heads, config.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
        return cls(
            keys=zeros,
            values=tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers)),
            positions=jnp.full((batch, length), -1, jnp.int32),
            end=jnp.zeros((), jnp.int32),
        )

    @property
    def length(self) -> int:
        return self.positions.shape[1]


@flax.struct.dataclass
class ModelOutput:
    hidden: jax.Array  # (B, T, D) float32 after the final RMSNorm.
    logits: jax.Array | None  # (B, K, V) float32 at `logits_at`, or None.
    cache: KVCache | None  # Updated cache when one was passed.


class RMSNorm(nnx.Module):
    """Gemma RMSNorm: x / rms(x) * (1 + w), computed in float32, w initialised to 0."""

    def __init__(self, dim: int, eps: float, axis_name: str, *, dtype, param_dtype):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(
            jnp.zeros((dim,), param_dtype), out_sharding=(axis_name,), eager_sharding=False
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (normed * (1.0 + self.scale[...].astype(jnp.float32))).astype(self.dtype)


def rope(x: jax.Array, positions: jax.Array, base: float, scale: float = 1.0) -> jax.Array:
    """Rotary embedding in the rotate-half layout. x: (B, T, N, H); positions: (B, T)."""
    head_dim = x.shape[-1]
    inv_freq = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    inv_freq = (inv_freq / np.float32(scale)).astype(np.float32)
    freqs = positions[..., None].astype(jnp.float32) * jnp.asarray(inv_freq, jnp.float32)
    angles = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # (B, T, 1, H)
    cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
    half = head_dim // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


def dense(x: jax.Array, w: jax.Array, contract: int) -> jax.Array:
    """x (B, T, *I) times w (*I, *O) over the ``contract`` trailing axes of x -> (B, T, *O)."""
    lead, inner = x.shape[:-contract], x.shape[-contract:]
    outer = w.shape[contract:]
    flat = _dense(x.reshape(*lead, math.prod(inner)), w.reshape(math.prod(inner), -1))
    return flat.reshape(*lead, *outer)


@jax.custom_vjp
def _dense(x: jax.Array, w: jax.Array) -> jax.Array:  # (..., I) @ (I, O) -> (..., O)
    return x @ w


def _dense_fwd(x, w):
    return x @ w, (x, w)


def _dense_bwd(res, dy):
    x, w = res
    # dW contracts the tokens, the major axis of both x and dy. Left alone, XLA's CPU layout
    # transposes dy (often the wider) and then the (O, I) product back to (I, O); fixing
    # x^T as its own array (the barrier keeps it) makes dW one plain (I, T) @ (T, O) matmul.
    # Accelerator matmuls take transposed operands as they are: no barrier there.
    x_t = x.reshape(-1, x.shape[-1]).T  # (I, T)
    if jax.default_backend() == "cpu":
        x_t = jax.lax.optimization_barrier(x_t)
    dw = x_t @ dy.reshape(-1, dy.shape[-1])  # (I, O)
    return dy @ w.T, dw


_dense.defvjp(_dense_fwd, _dense_bwd)


class Attention(nnx.Module):
    """Grouped-query attention, local (sliding window) or global, through
    jax.nn.dot_product_attention; ``implementation`` is its choice of kernel (None: JAX's
    default, "xla" or "cudnn", the fused kernel on NVIDIA GPUs for bfloat16/float16)."""

    def __init__(self, config: Gemma3Config, layer: int, *, rngs, dtype, param_dtype,
                 implementation: str | None = None):
        d, n, k, h = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0)
        out_init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=(0, 1))
        self.config = config
        self.is_global = config.is_global(layer)
        self.dtype = dtype
        self.implementation = implementation
        self.q_proj = _param(rngs, init, (d, n, h), param_dtype, ("embed", "heads", "head_dim"))
        self.k_proj = _param(rngs, init, (d, k, h), param_dtype, ("embed", "kv_heads", "head_dim"))
        self.v_proj = _param(rngs, init, (d, k, h), param_dtype, ("embed", "kv_heads", "head_dim"))
        self.o_proj = _param(rngs, out_init, (n, h, d), param_dtype, ("heads", "head_dim", "embed"))
        norm_kw = dict(dtype=dtype, param_dtype=param_dtype)
        self.q_norm = RMSNorm(h, config.rms_eps, "head_dim", **norm_kw)
        self.k_norm = RMSNorm(h, config.rms_eps, "head_dim", **norm_kw)

    def __call__(self, x, positions, key_mask, layer, cache, segment_ids=None):
        cfg = self.config
        base = cfg.global_rope_base if self.is_global else cfg.local_rope_base
        scale = cfg.global_rope_scale if self.is_global else 1.0
        q = dense(x, self.q_proj[...].astype(self.dtype), 1)  # (B, T, N, H)
        k = dense(x, self.k_proj[...].astype(self.dtype), 1)  # (B, T, K, H)
        v = dense(x, self.v_proj[...].astype(self.dtype), 1)  # (B, T, K, H)
        q = constrain(q, ("batch", "length", "act_heads", "head_dim"))
        q = rope(self.q_norm(q), positions, base, scale)
        k = rope(self.k_norm(k), positions, base, scale)
        key_positions = jnp.where(key_mask, positions, -1)  # (B, T)
        if cache is not None:
            k_all = jax.lax.dynamic_update_slice_in_dim(cache.keys[layer], k, cache.end, axis=1)
            v_all = jax.lax.dynamic_update_slice_in_dim(cache.values[layer], v, cache.end, axis=1)
            key_positions = jax.lax.dynamic_update_slice_in_dim(
                cache.positions, key_positions, cache.end, axis=1
            )  # (B, S)
            new_kv = (k_all, v_all)
            k, v = k_all, v_all  # (B, S, K, H)
        else:
            new_kv = None
        # Gemma scales queries by query_pre_attn_scalar**-0.5 (not head_dim**-0.5): applied to
        # q as before, so the kernel runs with scale 1 and the logits are today's.
        q = q * jnp.asarray(cfg.query_pre_attn_scalar**-0.5, q.dtype)
        q_pos = positions[:, :, None]  # (B, T, 1)
        k_pos = key_positions[:, None, :]  # (B, 1, S)
        # Masks by position, not slot: left padding, the KV cache and packed rows alike.
        allowed = (k_pos >= 0) & (k_pos <= q_pos)  # (B, T, S)
        if not self.is_global:
            allowed &= q_pos - k_pos < cfg.sliding_window
        if segment_ids is not None:  # Packed rows: never across sequences.
            allowed &= segment_ids[:, :, None] == segment_ids[:, None, :]
        # Grouped-query attention with float32 logits and softmax; a row with every key
        # masked (a padding query) gets a finite large negative, never NaN.
        out = jax.nn.dot_product_attention(
            q, k.astype(q.dtype), v.astype(q.dtype), mask=allowed[:, None], scale=1.0,
            implementation=self.implementation,
        )  # (B, T, N, H)
        out = dense(out, self.o_proj[...].astype(self.dtype), 2)  # (B, T, D)
        return out, new_kv, key_positions


class MLP(nnx.Module):
    """Gated feed-forward block: down(gelu_tanh(gate(x)) * up(x))."""

    def __init__(self, config: Gemma3Config, *, rngs, dtype, param_dtype):
        d, f = config.embed_dim, config.mlp_dim
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "normal", in_axis=0)
        self.dtype = dtype
        self.gate_proj = _param(rngs, init, (d, f), param_dtype, ("embed", "mlp"))
        self.up_proj = _param(rngs, init, (d, f), param_dtype, ("embed", "mlp"))
        self.down_proj = _param(rngs, init, (f, d), param_dtype, ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        gate = dense(x, self.gate_proj[...].astype(self.dtype), 1)  # (B, T, F)
        up = dense(x, self.up_proj[...].astype(self.dtype), 1)  # (B, T, F)
        hidden = constrain(jax.nn.gelu(gate, approximate=True) * up, ("batch", "length", "act_mlp"))
        return dense(hidden, self.down_proj[...].astype(self.dtype), 1)  # (B, T, D)


class DecoderLayer(nnx.Module):
    def __init__(self, config: Gemma3Config, layer: int, *, rngs, dtype, param_dtype,
                 attention_implementation: str | None = None):
        kw = dict(dtype=dtype, param_dtype=param_dtype)
        d, eps = config.embed_dim, config.rms_eps
        self.pre_attention_norm = RMSNorm(d, eps, "norm", **kw)
        self.attention = Attention(config, layer, rngs=rngs, **kw,
                                   implementation=attention_implementation)
        self.post_attention_norm = RMSNorm(d, eps, "norm", **kw)
        self.pre_ffw_norm = RMSNorm(d, eps, "norm", **kw)
        self.mlp = MLP(config, rngs=rngs, **kw)
        self.post_ffw_norm = RMSNorm(d, eps, "norm", **kw)

    def __call__(self, x, positions, key_mask, layer, cache, segment_ids=None):
        attn, new_kv, key_positions = self.attention(
            self.pre_attention_norm(x), positions, key_mask, layer, cache, segment_ids
        )
        x = x + self.post_attention_norm(attn)
        x = x + self.post_ffw_norm(self.mlp(self.pre_ffw_norm(x)))
        return constrain(x, ("batch", "length", "act_embed")), new_kv, key_positions


def project_logits(hidden: jax.Array, embedding: jax.Array, dtype, softcap: float | None):
    """float32 logits (..., V) of hidden (..., D) through the tied embedding (V, D)."""
    logits = jnp.einsum(
        "...d,vd->...v",
        hidden.astype(dtype),
        embedding.astype(dtype),
        preferred_element_type=jnp.float32,
    )
    if softcap is not None:
        logits = jnp.tanh(logits / softcap) * softcap
    return logits


class Gemma3(nnx.Module):
    """The Gemma 3 text decoder; one call gives hidden states everywhere, logits where asked."""

    def __init__(
        self,
        config: Gemma3Config,
        *,
        rngs: nnx.Rngs,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        remat: bool = False,
        attention_implementation: str | None = None,
    ):
        self.config = config
        self.dtype = dtype
        self.remat = remat  # Recompute each layer's activations in the backward pass.
        embed_init = nnx.initializers.normal(stddev=1.0 / math.sqrt(config.embed_dim))
        self.embedding = _param(
            rngs, embed_init, (config.vocab_size, config.embed_dim), param_dtype, ("vocab", "embed")
        )
        # jax.nn.dot_product_attention's kernel: None (JAX's choice), "xla" or "cudnn".
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                  attention_implementation=attention_implementation)
        self.layers = nnx.List([DecoderLayer(config, i, **kw) for i in range(config.num_layers)])
        self.final_norm = RMSNorm(
            config.embed_dim, config.rms_eps, "norm", dtype=dtype, param_dtype=param_dtype
        )

    def embed(self, tokens: jax.Array) -> jax.Array:
        """Scaled token embeddings (B, T, D) in the compute dtype (the scale too, as HF)."""
        x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)
        return x * jnp.asarray(math.sqrt(self.config.embed_dim), self.dtype)

    def logits(self, hidden: jax.Array) -> jax.Array:
        """float32 logits (..., V) of final hidden states through the tied embedding."""
        return project_logits(
            hidden, self.embedding[...], self.dtype, self.config.final_logit_softcap
        )

    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        input_mask: jax.Array,
        logits_at: jax.Array | None = None,
        cache: KVCache | None = None,
        segment_ids: jax.Array | None = None,
    ) -> ModelOutput:
        """tokens, positions: (B, T) int32; input_mask: (B, T) bool; logits_at: (B, K).

        segment_ids (B, T) int32, optional: packed sequences, attention within equal ids only
        (no KV cache then); positions must restart at 0 in each segment.
        """
        if segment_ids is not None and cache is not None:
            raise ValueError("segment_ids (packed rows) cannot be used with a KV cache")
        tokens = constrain(tokens, ("batch", "length"))
        x = constrain(self.embed(tokens), ("batch", "length", "act_embed"))  # (B, T, D)
        new_keys, new_values = [], []
        key_positions = None
        for i, layer in enumerate(self.layers):
            if self.remat:
                call = nnx.remat(lambda mdl, *a: mdl(*a), static_argnums=(4,))
                x, new_kv, key_positions = call(
                    layer, x, positions, input_mask, i, cache, segment_ids
                )
            else:
                x, new_kv, key_positions = layer(x, positions, input_mask, i, cache, segment_ids)
            if new_kv is not None:
                new_keys.append(new_kv[0])
                new_values.append(new_kv[1])
        hidden = self.final_norm(x)  # (B, T, D)
        new_cache = None
        if cache is not None:
            new_cache = KVCache(
                keys=tuple(new_keys),
                values=tuple(new_values),
                positions=key_positions,
                end=cache.end + tokens.shape[1],
            )
        logits = None
        if logits_at is not None:
            picked = jnp.take_along_axis(hidden, logits_at[..., None], axis=1)  # (B, K, D)
            logits = constrain(self.logits(picked), ("batch", "length", "act_vocab"))
        return ModelOutput(hidden=hidden.astype(jnp.float32), logits=logits, cache=new_cache)

"""Properties of the NNX Gemma 3 on tiny random configs: cache, masks, dtypes, metadata."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from calrec_core.model import Gemma3, Gemma3Config, KVCache, logical_to_spec
from calrec_core.model.sharding import LOGICAL_AXIS_RULES

CONFIG = Gemma3Config.tiny()


@pytest.fixture(scope="module")
def model():
    return Gemma3(CONFIG, rngs=nnx.Rngs(0))


LENGTH = 32  # One sequence length (> window 8) for most tests: fewer compiles.


def _batch(batch=2, length=LENGTH, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(4, CONFIG.vocab_size, (batch, length)).astype(np.int32)
    positions = np.broadcast_to(np.arange(length, dtype=np.int32), (batch, length))
    return tokens, positions, np.ones((batch, length), bool)


@nnx.jit
def _forward(model, tokens, positions, mask, logits_at=None, cache=None):
    return model(tokens, positions, mask, logits_at=logits_at, cache=cache)


def _all_logits(model, tokens, positions, mask):
    every = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    return np.asarray(_forward(model, tokens, positions, mask, every).logits)


def test_output_shapes_and_optional_logits(model):
    tokens, positions, mask = _batch()
    out = _forward(model, tokens, positions, mask)
    assert out.hidden.shape == (2, LENGTH, CONFIG.embed_dim) and out.hidden.dtype == jnp.float32
    assert out.logits is None and out.cache is None
    at = np.array([[LENGTH - 1, 0]] * 2, np.int32)
    out = _forward(model, tokens, positions, mask, at)
    assert out.logits.shape == (2, 2, CONFIG.vocab_size) and out.logits.dtype == jnp.float32
    full = _all_logits(model, tokens, positions, mask)
    np.testing.assert_allclose(out.logits[:, 0], full[:, -1], atol=1e-5)
    np.testing.assert_allclose(out.logits[:, 1], full[:, 0], atol=1e-5)


def test_kv_cache_decoding_equals_full_forward_at_every_step(model):
    tokens, positions, mask = _batch(seed=1)
    full = _all_logits(model, tokens, positions, mask)
    cache = KVCache.create(CONFIG, 2, 40)
    prefix = (tokens[:, :5], positions[:, :5], mask[:, :5])
    out = _forward(model, *prefix, np.full((2, 1), 4, np.int32), cache)
    np.testing.assert_allclose(out.logits[:, 0], full[:, 4], atol=1e-5)
    one = np.zeros((2, 1), np.int32)
    for t in range(5, LENGTH):
        step = (tokens[:, t : t + 1], positions[:, t : t + 1], mask[:, t : t + 1])
        out = _forward(model, *step, one, out.cache)
        np.testing.assert_allclose(out.logits[:, 0], full[:, t], atol=1e-5, err_msg=f"step {t}")
    assert int(out.cache.end) == LENGTH


def test_left_padding_does_not_change_real_tokens(model):
    """Row 0: 26 tokens then right padding; row 1: the same tokens after 6 left pads."""
    tokens, positions, mask = _batch(seed=2)
    n, pad = LENGTH - 6, 6
    tokens, positions, mask = tokens.copy(), positions.copy(), mask.copy()
    tokens[1, pad:] = tokens[0, :n]
    tokens[1, :pad] = 7
    positions[1] = np.concatenate([np.zeros(pad, np.int32), np.arange(n, dtype=np.int32)])
    mask[0, n:] = False
    mask[1, :pad] = False
    logits = _all_logits(model, tokens, positions, mask)
    np.testing.assert_allclose(logits[1, pad:], logits[0, :n], atol=1e-5)
    assert np.isfinite(logits).all()


def test_sliding_window_bounds_what_local_layers_see(model):
    """Only a global layer lets a token beyond the window change the last position."""
    local_only = Gemma3(dataclasses.replace(CONFIG, global_every=100), rngs=nnx.Rngs(0))
    tokens, positions, mask = _batch(seed=3)
    changed = tokens.copy()
    changed[:, 0] += 1  # 4 local layers of window 8 see back from 31 to 31 - 4 * 7 = 3.
    last = np.full((2, 1), LENGTH - 1, np.int32)
    base = _forward(local_only, tokens, positions, mask, last).logits
    np.testing.assert_array_equal(_forward(local_only, changed, positions, mask, last).logits, base)
    base = _forward(model, tokens, positions, mask, last).logits
    assert np.abs(_forward(model, changed, positions, mask, last).logits - base).max() > 0


def test_bfloat16_compute_stays_close_and_outputs_float32(model):
    bf16 = Gemma3(CONFIG, rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    tokens, positions, mask = _batch(seed=4)
    out = _forward(bf16, tokens, positions, mask, positions)
    assert out.hidden.dtype == jnp.float32 and out.logits.dtype == jnp.float32
    reference = _all_logits(model, tokens, positions, mask)
    assert np.abs(np.asarray(out.logits) - reference).max() < 0.1


def test_remat_gives_the_same_gradients():
    tokens, positions, mask = _batch(seed=5)

    @nnx.jit
    def grads(m):
        def loss(m):
            return jnp.mean(m(tokens, positions, mask, logits_at=positions).logits ** 2)

        return nnx.grad(loss)(m)

    plain = grads(Gemma3(CONFIG, rngs=nnx.Rngs(0)))
    remat = grads(Gemma3(CONFIG, rngs=nnx.Rngs(0), remat=True))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_every_parameter_has_logical_axes_covered_by_the_rules(model):
    rules = dict(LOGICAL_AXIS_RULES)
    params = nnx.to_flat_state(nnx.state(model, nnx.Param))
    assert len(params) == 2 + CONFIG.num_layers * 13
    for path, variable in params:
        names = variable.get_metadata().get("out_sharding")
        assert names is not None and len(names) == variable.shape.__len__(), path
        assert all(name in rules for name in names), (path, names)
    assert logical_to_spec(("batch", "length", "act_vocab")) == jax.P(
        ("data", "fsdp"), None, "tensor"
    )
    with pytest.raises(KeyError):
        logical_to_spec(("no_such_axis",))


def test_config_validation_and_layer_pattern():
    assert [Gemma3Config.gemma3_270m().is_global(i) for i in range(12)] == [
        (i + 1) % 6 == 0 for i in range(12)
    ]
    assert [CONFIG.is_global(i) for i in range(4)] == [False, False, False, True]
    with pytest.raises(ValueError, match="multiple"):
        Gemma3Config(
            vocab_size=8,
            embed_dim=4,
            num_layers=1,
            num_heads=3,
            num_kv_heads=2,
            head_dim=2,
            mlp_dim=4,
        )
    with pytest.raises(ValueError, match="layer_types"):
        Gemma3Config(
            vocab_size=8,
            embed_dim=4,
            num_layers=2,
            num_heads=1,
            num_kv_heads=1,
            head_dim=2,
            mlp_dim=4,
            layer_types=("full_attention",),
        )


@pytest.mark.parametrize(("x_shape", "w_shape", "contract"), [
    ((2, 5, 6), (6, 3, 4), 1),  # q/k/v: (B, T, D) x (D, N, H)
    ((2, 5, 3, 4), (3, 4, 6), 2),  # o: (B, T, N, H) x (N, H, D)
])
def test_dense_value_and_gradients_equal_tensordot(x_shape, w_shape, contract):
    """The projections' custom VJP (its own weight-gradient layout) is tensordot's derivative."""
    from calrec_core.model.gemma import dense

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=w_shape), jnp.float32)
    r = jnp.asarray(rng.normal(size=x_shape[:2] + w_shape[contract:]), jnp.float32)

    def ours(x, w):
        return jnp.sum(dense(x, w, contract) * r)

    def reference(x, w):
        return jnp.sum(jnp.tensordot(x, w, contract) * r)

    np.testing.assert_allclose(ours(x, w), reference(x, w), rtol=1e-6)
    for got, want in zip(jax.jit(jax.grad(ours, argnums=(0, 1)))(x, w),
                         jax.grad(reference, argnums=(0, 1))(x, w), strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

"""The KV-cache sampler on a tiny random model: batching, stopping, scores, randomness."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from calrec_core.model import Gemma3, Gemma3Config, generate, generate_texts, make_tiny_tokenizer

CONFIG = Gemma3Config.tiny()


@pytest.fixture(scope="module")
def model():
    return Gemma3(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(scope="module")
def prompts(tokenizer):
    texts = ["Title: a.", "Title: a much longer history, long enough to pass the window.", "x"]
    return [[tokenizer.bos_id] + tokenizer.encode(t) for t in texts]


@nnx.jit
def _jitted_logits(model, ids, mask, logits_at):
    positions = jnp.arange(ids.shape[1], dtype=jnp.int32)[None]
    return model(ids, positions, mask, logits_at=logits_at).logits


def _forward_logits(model, ids, logits_at, length=128):
    """Logits of one row, right-padded to one length so that a single compile serves all."""
    n = ids.shape[1]
    padded = np.zeros((1, length), np.int32)
    padded[:, :n] = ids
    mask = np.arange(length)[None] < n
    at = np.zeros((1, 16), np.int32)
    at[:, : logits_at.shape[1]] = logits_at
    return np.asarray(_jitted_logits(model, padded, mask, at))[:, : logits_at.shape[1]]


def _sequence_logprob(model, prompt, generated):
    """Sum of log-softmax over the generated tokens by one plain forward (no cache)."""
    ids = np.asarray([list(prompt) + list(generated)], np.int32)
    n = ids.shape[1]
    at = np.arange(len(prompt) - 1, n - 1, dtype=np.int32)[None]
    logits = np.asarray(_forward_logits(model, ids, at))[0].astype(np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
    logp -= logits.max(-1, keepdims=True)
    return float(logp[np.arange(len(generated)), generated].sum())


def test_batched_mixed_lengths_equal_per_prompt_sampling(model, prompts):
    together = generate(model, prompts, num_samples=3, max_new_tokens=12, seed=7, batch_size=8)
    alone = [
        generate(model, [p], num_samples=3, max_new_tokens=12, batch_size=8, seed=7)[0]
        for p in prompts
    ]
    assert [[s.token_ids for s in row] for row in together] == [
        [s.token_ids for s in row] for row in alone
    ]
    for row_a, row_b in zip(together, alone, strict=True):
        np.testing.assert_allclose(
            [s.logprob for s in row_a], [s.logprob for s in row_b], rtol=1e-5, atol=1e-5
        )


def test_seed_determines_samples(model, prompts):
    first = generate(model, prompts, num_samples=4, max_new_tokens=8, batch_size=8, seed=3)
    again = generate(model, prompts, num_samples=4, max_new_tokens=8, batch_size=8, seed=3)
    other = generate(model, prompts, num_samples=4, max_new_tokens=8, batch_size=8, seed=4)
    assert first == again
    assert first != other
    assert len({s.token_ids for s in first[1]}) > 1  # Samples of one prompt differ.


def test_logprob_is_the_unscaled_sequence_logprob(model, prompts):
    samples = generate(
        model,
        prompts,
        num_samples=2,
        max_new_tokens=10,
        batch_size=8,
        temperature=0.7,
        seed=1,
        stop_ids=(),
    )
    for prompt, row in zip(prompts, samples, strict=True):
        for sample in row:
            assert len(sample.token_ids) == 10 and not sample.stopped
            expected = _sequence_logprob(model, prompt, sample.token_ids)
            assert sample.logprob == pytest.approx(expected, abs=1e-3)


def test_stop_token_ends_the_sample_and_counts_in_the_score(model, prompts):
    (free,) = generate(
        model, prompts[:1], greedy=True, max_new_tokens=10, batch_size=8, stop_ids=()
    )
    tokens = free[0].token_ids
    stop = tokens[3]
    cut = tokens.index(stop)
    (stopped,) = generate(
        model, prompts[:1], greedy=True, max_new_tokens=10, batch_size=8, stop_ids=[stop]
    )
    assert stopped[0].token_ids == tokens[:cut] and stopped[0].stopped
    expected = _sequence_logprob(model, prompts[0], tokens[: cut + 1])
    assert stopped[0].logprob == pytest.approx(expected, abs=1e-3)


def test_greedy_equals_argmax_rollout(model, prompts):
    (row,) = generate(
        model, prompts[1:2], num_samples=2, greedy=True, max_new_tokens=6, batch_size=8, stop_ids=()
    )
    ids = list(prompts[1])
    for _ in range(6):
        logits = _forward_logits(
            model, np.asarray([ids], np.int32), np.asarray([[len(ids) - 1]], np.int32)
        )
        ids.append(int(np.argmax(logits[0, 0])))
    assert row[0].token_ids == row[1].token_ids == tuple(ids[len(prompts[1]) :])


def test_temperature_sampling_follows_the_softmax(model, tokenizer):
    """First-token frequencies over 1000 samples match softmax(logits / T)."""
    prompt = [tokenizer.bos_id] + tokenizer.encode("Ti")
    temperature = 2.0
    (row,) = generate(
        model,
        [prompt],
        num_samples=1000,
        max_new_tokens=1,
        batch_size=8,
        temperature=temperature,
        stop_ids=(),
    )
    at = np.asarray([[len(prompt) - 1]], np.int32)
    logits = np.asarray(_forward_logits(model, np.asarray([prompt], np.int32), at))[0, 0]
    logits = logits.astype(np.float64) / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    counts = np.bincount([s.token_ids[0] for s in row], minlength=CONFIG.vocab_size)
    top = np.argsort(probs)[-5:]
    sigma = np.sqrt(probs[top] * (1 - probs[top]) / 1000)
    assert np.all(np.abs(counts[top] / 1000 - probs[top]) < 5 * sigma + 1e-3)


def test_stop_at_newline_and_texts(model, tokenizer, prompts):
    newline = next(iter(tokenizer.newline_ids))
    texts, ids, logprobs = generate_texts(
        model,
        tokenizer,
        prompts,
        num_samples=2,
        max_new_tokens=16,
        batch_size=8,
        seed=2,
        stop_at_newline=True,
    )
    assert len(texts) == len(prompts) and all(len(row) == 2 for row in texts)
    for text_row, id_row in zip(texts, ids, strict=True):
        for text, sample_ids in zip(text_row, id_row, strict=True):
            assert newline not in sample_ids and "\n" not in text
            assert text == tokenizer.decode(sample_ids).strip()
    assert all(lp < 0 for row in logprobs for lp in row)


def test_bad_prompts_are_rejected(model, tokenizer):
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, [[]])
    with pytest.raises(ValueError, match="token ids"):
        generate(model, [[2, CONFIG.vocab_size]])
    with pytest.raises(ValueError, match="tokenizer"):
        generate(model, [[2]], stop_at_newline=True)


def test_length_bucket_changes_padding_not_samples(model, prompts):
    """The prompt-length bucket (an EvalConfig field) only sets the left padding."""
    kwargs = dict(num_samples=3, max_new_tokens=10, seed=5, batch_size=8)
    narrow = generate(model, prompts, length_bucket=16, **kwargs)
    wide = generate(model, prompts, length_bucket=256, **kwargs)
    assert [[s.token_ids for s in row] for row in narrow] == [
        [s.token_ids for s in row] for row in wide
    ]
    np.testing.assert_allclose([[s.logprob for s in row] for row in narrow],
                               [[s.logprob for s in row] for row in wide], rtol=1e-5, atol=1e-5)


def _draws(logits: np.ndarray, draws: int, temperature: float, block: int) -> np.ndarray:
    import jax

    from calrec_core.model.decoding import draw_tokens

    draw = jax.jit(draw_tokens, static_argnames="block")
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(7), i))(jnp.arange(draws))
    chunk = 200  # rows at a time: 200 x 262,144 float32 logits are 200 MB
    rows = jnp.broadcast_to(jnp.asarray(logits, jnp.float32), (chunk, len(logits)))
    return np.concatenate([
        np.asarray(draw(keys[start:start + chunk], rows[:len(keys[start:start + chunk])],
                        temperature, block=block))
        for start in range(0, draws, chunk)])


@pytest.mark.parametrize(("vocab", "block"), [(1000, 64), (262_144, 512)])
def test_inverse_cdf_draws_follow_softmax_over_temperature(vocab, block):
    """Frequencies of 2,000 draws against softmax(logits / T) in float64 (chi-square, tokens
    of small expected count pooled); masked tokens, at block edges too, are never drawn."""
    from scipy.stats import chisquare

    rng = np.random.default_rng(vocab)
    logits = rng.normal(0.0, 1.0, vocab)
    heavy = rng.choice(vocab, 12, replace=False)
    logits[heavy] += rng.uniform(7.0, 10.0, 12)  # a peaked head, as a language model's
    masked = np.r_[0, block - 1, block, vocab - 1, rng.choice(vocab, 50)]
    masked = np.setdiff1d(masked, heavy)
    logits[masked] = -np.inf
    temperature, draws = 0.7, 2000
    tokens = _draws(logits, draws, temperature, block)
    assert tokens.min() >= 0 and tokens.max() < vocab
    assert not np.isin(tokens, masked).any()
    probs = np.exp((logits - logits.max()) / temperature)
    probs /= probs.sum()
    counts = np.bincount(tokens, minlength=vocab).astype(float)
    expected = probs * draws
    large = expected >= 5
    observed = np.r_[counts[large], counts[~large].sum()]
    wanted = np.r_[expected[large], expected[~large].sum()]
    assert large.sum() >= 8
    assert chisquare(observed, wanted).pvalue > 1e-3


def test_a_draw_depends_only_on_its_key_and_its_row():
    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 2.0, 3000)
    first = _draws(logits, 64, 1.0, 128)
    assert np.array_equal(first, _draws(logits, 64, 1.0, 128))
    assert len(set(first.tolist())) > 10  # different keys, different tokens
    # A point mass is always drawn.
    point = np.full(3000, -np.inf)
    point[1234] = 0.0
    assert set(_draws(point, 16, 0.5, 128).tolist()) == {1234}

"""Temperature sampling with a KV cache, batched over prompts of different lengths.

Prompts are left-padded to a bucketed length (per-row position ids keep RoPE and masks
right), each prompt is encoded once and its KV cache copied to its samples, every
(prompt, sample) pair is then one decoding row, and the whole decode loop runs in one
jitted ``lax.while_loop`` that stops early once every row has stopped.

Randomness is per row: a sample's key is derived from the seed, a hash of its prompt's
tokens and its sample index, so a prompt gets the same samples however the prompts are
batched, ordered or split over devices.

A sample's ``logprob`` is the sum, over its generated tokens (the stop token included when
one ended it), of the model's float32 log-softmax of the *unscaled* logits (temperature 1),
so scores are comparable across sampling temperatures.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import zlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from calrec_core.model.gemma import Gemma3, KVCache
from calrec_core.model.sharding import batch_multiple, logical_to_sharding, shard_model

GEMMA_EOS_ID = 1  # Gemma's (and ByteTokenizer's) end of sequence.


@dataclasses.dataclass(frozen=True)
class Sample:
    token_ids: tuple[int, ...]  # Generated tokens, the stop token excluded.
    logprob: float  # Sum of log p(token) at temperature 1 over generated tokens (+ stop token).
    stopped: bool  # True when a stop token ended it, False when max_new_tokens did.


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _prompt_hash(prompt: Sequence[int]) -> int:
    return zlib.crc32(np.asarray(prompt, np.int32).tobytes()) & 0x7FFFFFFF


def _left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int):
    batch = len(prompts)
    tokens = np.full((batch, length), pad_id, np.int32)
    positions = np.zeros((batch, length), np.int32)
    mask = np.zeros((batch, length), bool)
    for row, prompt in enumerate(prompts):
        n = len(prompt)
        tokens[row, length - n :] = prompt
        positions[row, length - n :] = np.arange(n)
        mask[row, length - n :] = True
    return tokens, positions, mask


def _inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """The first index i with cumsum(weights)[i] >= u, per row: weights (B, N) >= 0, u (B,)
    in (0, weights' row sum]; never more than N - 1."""
    # cummax: non-decreasing whatever order the prefix sum adds in.
    cdf = jax.lax.cummax(jnp.cumsum(weights, axis=-1), axis=1)  # (B, N)
    u = jnp.minimum(u, cdf[:, -1])  # the row sum as this prefix sum rounds it
    return jnp.sum(cdf < u[:, None], axis=-1)  # (B,)


def draw_tokens(keys: jax.Array, logits: jax.Array, temperature, block: int = 512) -> jax.Array:
    """One token per row drawn from softmax(logits / temperature) by inverse CDF.

    keys (B,) PRNG keys, logits (B, V) float32 -> (B,) int32. One uniform u in (0, total]
    picks the token whose share of the cumulated float32 weights exp((l - max) / T) holds
    it: exact up to float32 rounding, and a token whose weight underflows to 0 is never
    drawn. In two levels: the block of ``block`` tokens from the block sums, then the token
    inside it, so only V / block + block entries are ever cumulated. It replaces
    jax.random.categorical's V Gumbel draws, which over 262,144 logits per row cost more
    than the vocabulary projection.
    """
    rows, vocab = logits.shape
    blocks = -(-vocab // block)
    logits = logits.astype(jnp.float32)
    top = jnp.max(logits, axis=-1, keepdims=True)  # (B, 1)
    weights = jnp.exp((logits - top) / temperature)  # (B, V) float32, the largest is 1
    weights = jnp.pad(weights, ((0, 0), (0, blocks * block - vocab)))
    weights = weights.reshape(rows, blocks, block)  # (B, NB, BL)
    block_sums = jnp.sum(weights, axis=-1)  # (B, NB)
    block_cdf = jax.lax.cummax(jnp.cumsum(block_sums, axis=-1), axis=1)  # (B, NB)
    uniform = jax.vmap(lambda key: jax.random.uniform(key, (), jnp.float32))(keys)  # [0, 1)
    u = (1.0 - uniform) * block_cdf[:, -1]  # (B,) in (0, total]
    chosen = _inverse_cdf(block_sums, u)  # (B,) the block
    before = jnp.where(chosen > 0, jnp.take_along_axis(
        block_cdf, jnp.maximum(chosen - 1, 0)[:, None], axis=1)[:, 0], 0.0)  # (B,)
    inside = jnp.take_along_axis(weights, chosen[:, None, None], axis=1)[:, 0]  # (B, BL)
    # u - before > 0: the chosen block is the first whose cumulated sum reaches u.
    offset = _inverse_cdf(inside, u - before)  # (B,)
    token = chosen * block + offset  # (B,)
    # Rounding could only land on a zero weight at a tie of cumulated sums: take the mode.
    weight = jnp.take_along_axis(inside, offset[:, None], axis=1)[:, 0]  # (B,)
    return jnp.where(weight > 0, token, jnp.argmax(logits, axis=-1)).astype(jnp.int32)


@functools.partial(nnx.jit, static_argnames=("budget", "pad_id", "num_samples"))
def _decode(
    model: Gemma3,
    tokens: jax.Array,  # (Bp, P) left-padded prompts, each once
    positions: jax.Array,  # (Bp, P)
    mask: jax.Array,  # (Bp, P)
    row_keys: jax.Array,  # (B,) one PRNG key per row, B = Bp * num_samples, prompt-major
    stop_mask: jax.Array,  # (V,) bool, True on tokens that end a sample
    temperature: jax.Array,  # () float32
    greedy: jax.Array,  # () bool
    max_new_tokens: jax.Array,  # () int32, at most budget
    *,
    budget: int,  # Static room for new tokens (bucketed so few values get compiled).
    pad_id: int,
    num_samples: int,  # Samples per prompt: the prompt is encoded once and its cache copied.
):
    num_prompts, prompt_len = tokens.shape
    batch = num_prompts * num_samples
    cache = KVCache.create(model.config, num_prompts, prompt_len + budget, model.dtype)
    last = jnp.full((num_prompts, 1), prompt_len - 1, jnp.int32)
    out = model(tokens, positions, mask, logits_at=last, cache=cache)
    # Prefill dominates the cost of short samples: share it across a prompt's samples.
    repeat = functools.partial(jnp.repeat, repeats=num_samples, axis=0, total_repeat_length=batch)
    prefilled = out.cache.replace(
        keys=tuple(repeat(k) for k in out.cache.keys),  # (B, S, K, H) each
        values=tuple(repeat(v) for v in out.cache.values),
        positions=repeat(out.cache.positions),  # (B, S)
    )
    first_logits = repeat(out.logits[:, 0])  # (B, V)
    next_position = repeat(positions[:, -1] + 1)  # (B,)

    def choose(logits, step):  # logits: (B, V) float32
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
        drawn = draw_tokens(keys, logits, temperature)
        return jnp.where(greedy, jnp.argmax(logits, axis=-1), drawn).astype(jnp.int32)

    def cond(carry):
        step, _, _, _, done, _, _ = carry
        return (step < max_new_tokens) & ~jnp.all(done)

    def body(carry):
        step, cache, logits, position, done, generated, logprob = carry
        token = choose(logits, step)  # (B,)
        token_logprob = jnp.take_along_axis(
            jax.nn.log_softmax(logits, axis=-1), token[:, None], axis=-1
        )[:, 0]
        token = jnp.where(done, pad_id, token)
        logprob = logprob + jnp.where(done, 0.0, token_logprob)
        generated = generated.at[:, step].set(token)
        done = done | stop_mask[token]
        out = model(
            token[:, None],
            position[:, None],
            jnp.ones((batch, 1), bool),
            logits_at=jnp.zeros((batch, 1), jnp.int32),
            cache=cache,
        )
        return step + 1, out.cache, out.logits[:, 0], position + 1, done, generated, logprob

    carry = (
        jnp.zeros((), jnp.int32),
        prefilled,
        first_logits,
        next_position,
        jnp.zeros((batch,), bool),
        jnp.full((batch, budget), pad_id, jnp.int32),
        jnp.zeros((batch,), jnp.float32),
    )
    _, _, _, _, done, generated, logprob = jax.lax.while_loop(cond, body, carry)
    return generated, logprob, done


@jax.jit
def _row_keys(seed, prompt_hashes, sample_indices):
    """One key per row from (seed, prompt content, sample index): batching-independent."""
    base = jax.random.key(seed)
    return jax.vmap(lambda h, s: jax.random.fold_in(jax.random.fold_in(base, h), s))(
        prompt_hashes, sample_indices
    )


def generate(
    model: Gemma3,
    prompts: Sequence[Sequence[int]],
    *,
    num_samples: int = 1,
    temperature: float = 0.5,
    max_new_tokens: int = 80,
    seed: int = 0,
    greedy: bool = False,
    stop_ids: Sequence[int] | None = None,
    stop_at_newline: bool = False,
    tokenizer=None,
    batch_size: int = 32,
    pad_id: int = 0,
    length_bucket: int = 64,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = False,
    prompt_lengths: Sequence[int] = (),
    batch_prompts: int | None = None,
) -> list[list[Sample]]:
    """``num_samples`` continuations of each prompt (token ids, BOS included).

    stop_ids: tokens that end a sample (default: the tokenizer's EOS, else Gemma's EOS).
    stop_at_newline: also stop at any token that writes a line break (needs ``tokenizer``);
      a pretrained model continues an item with "\\n\\nThe next item...".
    greedy (or temperature 0): argmax decoding; all samples of a prompt are then equal.
    batch_size: rows (prompt x sample pairs) decoded together, at least one prompt with all
      its samples; each prompt is encoded once and its KV cache copied to its samples.
      Prompts are left-padded to a multiple of ``length_bucket`` to limit recompiles.
    prompt_lengths: the padded prompt lengths to use (ascending; ``prompt_buckets``): a batch
      takes the smallest that holds its longest prompt (one longer than all: length_bucket).
    batch_prompts: pad every batch to this many prompts (at most a full batch's), so calls of
      any size share one decode program; None: to a power of two >= 2.
    mesh: decode data-parallel on this mesh (the model is sharded onto it).
    """
    if num_samples < 1 or max_new_tokens < 1:
        raise ValueError("num_samples and max_new_tokens must be positive")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (BOS)")
    greedy = greedy or temperature == 0
    if stop_ids is None:
        stop_ids = (tokenizer.eos_id,) if tokenizer is not None else (GEMMA_EOS_ID,)
    stops = set(int(i) for i in stop_ids)
    if stop_at_newline:
        if tokenizer is None:
            raise ValueError("stop_at_newline needs the tokenizer (to know the newline tokens)")
        stops |= set(tokenizer.newline_ids)
    vocab = model.config.vocab_size
    if any(not 0 <= i < vocab for i in stops):
        raise ValueError(f"stop token ids must lie in [0, {vocab})")
    stop_mask = np.zeros(vocab, bool)  # A fixed shape, whatever the number of stop tokens.
    stop_mask[sorted(stops)] = True
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise ValueError(f"prompt token ids must lie in [0, {vocab})")

    # Prompts of similar length share a batch (less padding); results go back by index.
    order = sorted(range(len(prompts)), key=lambda p: len(prompts[p]))
    multiple = batch_multiple(mesh)
    # A batch holds whole prompts with all their samples (prompt-major rows).
    prompts_per_batch = _round_up(max(1, batch_size // num_samples), multiple)
    budget = _round_up(max_new_tokens, 16)
    hashes = [_prompt_hash(p) for p in prompts]
    results: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]
    if mesh is not None:
        shard_model(model, mesh)
    from tqdm import tqdm

    starts = range(0, len(order), prompts_per_batch)
    for start in tqdm(starts, desc="Sampling", unit="batch", disable=not progress):
        chunk = order[start : start + prompts_per_batch]
        # Pad to a fixed count (or a power of two >= 2) of prompts with copies of a prompt: few
        # shapes to compile.
        wanted = batch_prompts or max(2, 1 << (len(chunk) - 1).bit_length())
        size = min(prompts_per_batch, _round_up(max(wanted, len(chunk)), multiple))
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        chunk_prompts = [prompts[p] for p in padded]
        longest = max(len(p) for p in chunk_prompts)
        length = next((n for n in sorted(prompt_lengths) if n >= longest),
                      _round_up(longest, length_bucket))
        tokens, positions, mask = _left_pad(chunk_prompts, length, pad_id)
        keys = _row_keys(
            seed,
            np.asarray([hashes[p] for p in padded for _ in range(num_samples)], np.int32),
            np.asarray([s for _ in padded for s in range(num_samples)], np.int32),
        )
        inputs = [tokens, positions, mask]
        if mesh is not None:
            batch_sharding = logical_to_sharding(("batch", "length"), mesh)
            inputs = [_to_mesh(x, batch_sharding) for x in inputs]
            keys = _to_mesh(keys, logical_to_sharding(("batch",), mesh))
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            generated, logprob, done = _decode(
                model,
                *inputs,
                keys,
                stop_mask,
                jnp.asarray(max(temperature, 1e-6), jnp.float32),
                jnp.asarray(greedy),
                jnp.asarray(max_new_tokens, jnp.int32),
                budget=budget,
                pad_id=pad_id,
                num_samples=num_samples,
            )
        generated, logprob, done = _to_host((generated, logprob, done))
        for index, p in enumerate(chunk):
            for s in range(num_samples):
                row = index * num_samples + s
                ids = [int(t) for t in generated[row, :max_new_tokens]]
                end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
                results[p][s] = Sample(
                    token_ids=tuple(ids[:end]),
                    logprob=float(logprob[row]),
                    stopped=bool(done[row]),
                )
    return results  # type: ignore[return-value]


def prompt_buckets(budget: int, length_bucket: int, count: int = 3) -> tuple[int, ...]:
    """At most ``count`` padded prompt lengths covering prompts of up to ``budget`` tokens:
    multiples of length_bucket at about 1/count, 2/count, ... of the budget, so an evaluation
    compiles at most ``count`` decode programs per batch size."""
    top = _round_up(budget, length_bucket)
    return tuple(sorted({min(top, _round_up(-(-budget * k // count), length_bucket))
                         for k in range(1, count + 1)}))


def _to_mesh(array: np.ndarray, sharding) -> jax.Array:
    """A host array every process holds whole, placed on a sharding that may span hosts."""
    return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])


def _to_host(arrays):
    """Whole numpy values of (possibly multi-host) sharded arrays, on every process."""
    from jax.experimental import multihost_utils

    return jax.tree.map(
        lambda x: (np.asarray(jax.device_get(x)) if x.is_fully_addressable
                   else multihost_utils.process_allgather(x, tiled=True)), arrays)


def generate_texts(model: Gemma3, tokenizer, prompts: Sequence[Sequence[int]], **kwargs):
    """``generate`` plus decoding: (texts, token_ids, logprobs), each [prompt][sample]."""
    samples = generate(model, prompts, tokenizer=tokenizer, **kwargs)
    texts = [[tokenizer.decode(s.token_ids).strip() for s in row] for row in samples]
    token_ids = [[list(s.token_ids) for s in row] for row in samples]
    logprobs = [[s.logprob for s in row] for row in samples]
    return texts, token_ids, logprobs

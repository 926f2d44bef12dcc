"""Temperature sampling with a KV cache, batched over prompts of different lengths.

Prompts are left-padded to a bucketed length (per-row position ids keep RoPE and masks
right), every (prompt, sample) pair is one row, and the whole decode loop runs in one
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


@functools.partial(nnx.jit, static_argnames=("budget", "pad_id"))
def _decode(
    model: Gemma3,
    tokens: jax.Array,  # (B, P) left-padded prompts
    positions: jax.Array,  # (B, P)
    mask: jax.Array,  # (B, P)
    row_keys: jax.Array,  # (B,) one PRNG key per row
    stop_mask: jax.Array,  # (V,) bool, True on tokens that end a sample
    temperature: jax.Array,  # () float32
    greedy: jax.Array,  # () bool
    max_new_tokens: jax.Array,  # () int32, at most budget
    *,
    budget: int,  # Static room for new tokens (bucketed so few values get compiled).
    pad_id: int,
):
    batch, prompt_len = tokens.shape
    cache = KVCache.create(model.config, batch, prompt_len + budget, model.dtype)
    last = jnp.full((batch, 1), prompt_len - 1, jnp.int32)
    out = model(tokens, positions, mask, logits_at=last, cache=cache)
    next_position = positions[:, -1] + 1  # (B,)

    def choose(logits, step):  # logits: (B, V) float32
        keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, step)
        draw = jax.vmap(lambda key, row: jax.random.categorical(key, row / temperature))
        return jnp.where(greedy, jnp.argmax(logits, axis=-1), draw(keys, logits)).astype(jnp.int32)

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
        out.cache,
        out.logits[:, 0],
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
) -> list[list[Sample]]:
    """``num_samples`` continuations of each prompt (token ids, BOS included).

    stop_ids: tokens that end a sample (default: the tokenizer's EOS, else Gemma's EOS).
    stop_at_newline: also stop at any token that writes a line break (needs ``tokenizer``);
      a pretrained model continues an item with "\\n\\nThe next item...".
    greedy (or temperature 0): argmax decoding; all samples of a prompt are then equal.
    batch_size: rows (prompt x sample pairs) decoded together; prompts are left-padded to
      a multiple of ``length_bucket`` to limit recompiles.
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

    rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    # Rows of similar prompt length share a batch (less padding); results go back by index.
    rows.sort(key=lambda row: len(prompts[row[0]]))
    multiple = batch_multiple(mesh)
    batch_size = _round_up(max(1, batch_size), multiple)
    budget = _round_up(max_new_tokens, 16)
    hashes = [_prompt_hash(p) for p in prompts]
    results: list[list[Sample | None]] = [[None] * num_samples for _ in prompts]
    if mesh is not None:
        shard_model(model, mesh)
    from tqdm import tqdm

    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="Sampling", unit="batch", disable=not progress):
        chunk = rows[start : start + batch_size]
        # Pad the batch to a power of two >= 8 (few shapes to compile) with copies of a row.
        size = min(batch_size, _round_up(max(8, 1 << (len(chunk) - 1).bit_length()), multiple))
        padded = chunk + [chunk[-1]] * (size - len(chunk))
        chunk_prompts = [prompts[p] for p, _ in padded]
        length = _round_up(max(len(p) for p in chunk_prompts), length_bucket)
        tokens, positions, mask = _left_pad(chunk_prompts, length, pad_id)
        keys = _row_keys(
            seed,
            np.asarray([hashes[p] for p, _ in padded], np.int32),
            np.asarray([s for _, s in padded], np.int32),
        )
        inputs = [tokens, positions, mask]
        if mesh is not None:
            batch_sharding = logical_to_sharding(("batch", "length"), mesh)
            inputs = [jax.device_put(x, batch_sharding) for x in inputs]
            keys = jax.device_put(keys, logical_to_sharding(("batch",), mesh))
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
            )
        generated, logprob, done = jax.device_get((generated, logprob, done))
        for row, (p, s) in enumerate(chunk):
            ids = [int(t) for t in generated[row, :max_new_tokens]]
            end = next((i for i, t in enumerate(ids) if t in stops), len(ids))
            results[p][s] = Sample(
                token_ids=tuple(ids[:end]), logprob=float(logprob[row]), stopped=bool(done[row])
            )
    return results  # type: ignore[return-value]


def generate_texts(model: Gemma3, tokenizer, prompts: Sequence[Sequence[int]], **kwargs):
    """``generate`` plus decoding: (texts, token_ids, logprobs), each [prompt][sample]."""
    samples = generate(model, prompts, tokenizer=tokenizer, **kwargs)
    texts = [[tokenizer.decode(s.token_ids).strip() for s in row] for row in samples]
    token_ids = [[list(s.token_ids) for s in row] for row in samples]
    logprobs = [[s.logprob for s in row] for row in samples]
    return texts, token_ids, logprobs

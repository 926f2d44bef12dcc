"""Exact model log-probabilities of item texts after a prompt, for the model rankings.

An item's tokens are its training target (``template.target_segment`` + EOS, as
``encode_example`` builds it), so a score is the model's log-probability of generating exactly
that item after the prompt. The prompt is encoded once (``prefill``); its KV cache is then
copied to as many rows as there are continuations, extended one token per row (``extend``,
beam search) or by whole texts (``continuation_logprobs``, reranking). Log-softmax is float32.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from calrec_core.model.gemma import KVCache
from calrec_core.template import target_segment

# Continuation lengths are padded to a power of two of at least this (few programs to compile,
# whatever the lengths of a user's candidates).
MIN_LENGTH_BUCKET = 16


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _length_bucket(n: int) -> int:
    return max(MIN_LENGTH_BUCKET, 1 << (max(n, 1) - 1).bit_length())


def item_token_ids(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Each text's training target ids: the tokens of " " + text, then EOS."""
    encoded = tokenizer.encode_batch([target_segment(text) for text in texts])
    return [list(ids) + [tokenizer.eos_id] for ids in encoded]


@dataclasses.dataclass(frozen=True)
class Prefix:
    """One encoded prompt: its KV cache and the log-probabilities of the first new token."""

    cache: KVCache  # (rows, S) slots; the prompt fills [0, padded_len).
    first_logprobs: np.ndarray  # (V,) float32 log p(token | prompt).
    prompt_len: int  # True prompt length: the position of the first new token.


@functools.partial(nnx.jit, static_argnames=("capacity", "rows"))
def _prefill(model, tokens, positions, mask, *, capacity: int, rows: int):
    cache = KVCache.create(model.config, 1, capacity, model.dtype)
    last = jnp.full((1, 1), tokens.shape[1] - 1, jnp.int32)
    out = model(tokens, positions, mask, logits_at=last, cache=cache)  # tokens: (1, P)
    repeat = functools.partial(jnp.repeat, repeats=rows, axis=0, total_repeat_length=rows)
    cache = out.cache.replace(keys=tuple(repeat(k) for k in out.cache.keys),  # (R, S, K, H)
                              values=tuple(repeat(v) for v in out.cache.values),
                              positions=repeat(out.cache.positions))  # (R, S)
    return cache, jax.nn.log_softmax(out.logits[0, 0].astype(jnp.float32))  # (V,)


def prefill(model, prompt: Sequence[int], *, rows: int, room: int, length_bucket: int,
            pad_id: int) -> Prefix:
    """Encodes ``prompt`` (BOS first) once; its cache is copied to ``rows`` rows with ``room``
    free slots after it (bucketed)."""
    length = _round_up(len(prompt), length_bucket)
    tokens = np.full((1, length), pad_id, np.int32)  # (1, P) left-padded
    tokens[0, length - len(prompt) :] = prompt
    positions = np.maximum(np.arange(length, dtype=np.int32) - (length - len(prompt)), 0)[None]
    mask = (np.arange(length) >= length - len(prompt))[None]  # (1, P)
    capacity = length + _length_bucket(room)
    cache, first = _prefill(model, tokens, positions, mask, capacity=capacity, rows=rows)
    return Prefix(cache, np.asarray(first, np.float32), len(prompt))


@nnx.jit
def _extend(model, cache, parents, tokens, positions, choices):
    """Rows reordered to their parents, then one token each; log-probs of ``choices``."""
    take = functools.partial(jnp.take, indices=parents, axis=0)  # parents: (R,)
    cache = cache.replace(keys=tuple(take(k) for k in cache.keys),
                          values=tuple(take(v) for v in cache.values),
                          positions=take(cache.positions))
    rows = tokens.shape[0]
    out = model(tokens[:, None], positions[:, None], jnp.ones((rows, 1), bool),
                logits_at=jnp.zeros((rows, 1), jnp.int32), cache=cache)
    logprobs = jax.nn.log_softmax(out.logits[:, 0].astype(jnp.float32), axis=-1)  # (R, V)
    return out.cache, jnp.take_along_axis(logprobs, choices, axis=1)  # (R, K)


def extend(model, cache: KVCache, parents, tokens, position: int, choices):
    """One decoding step of every row: row r continues row ``parents[r]`` with ``tokens[r]``
    at ``position``; returns (new cache, (R, K) float32 log-probs of ``choices`` (R, K) as
    the next token)."""
    rows = len(tokens)
    cache, picked = _extend(model, cache, np.asarray(parents, np.int32),
                            np.asarray(tokens, np.int32), np.full(rows, position, np.int32),
                            np.asarray(choices, np.int32))
    return cache, np.asarray(picked, np.float32)


@nnx.jit
def _continuations(model, cache, tokens, positions, mask):
    """Per-token log-probs of right-padded continuations (C, L) after one cached prompt.

    Column 0 is left 0 (the caller has it from the prefill); column j > 0 is
    log p(tokens[:, j] | prompt, tokens[:, :j])."""
    out = model(tokens, positions, mask, cache=cache)
    hidden = jnp.swapaxes(out.hidden, 0, 1)  # (L, C, D)

    def one_position(args):  # one (C, V) logits block at a time bounds the memory
        h, target = args  # (C, D), (C,)
        logprobs = jax.nn.log_softmax(model.logits(h).astype(jnp.float32), axis=-1)  # (C, V)
        return jnp.take_along_axis(logprobs, target[:, None], axis=1)[:, 0]  # (C,)

    picked = jax.lax.map(one_position, (hidden[:-1], jnp.swapaxes(tokens, 0, 1)[1:]))
    picked = jnp.swapaxes(picked, 0, 1)  # (C, L - 1)
    return jnp.pad(picked, ((0, 0), (1, 0)))  # (C, L)


def continuation_logprobs(model, prompt: Sequence[int], continuations: Sequence[Sequence[int]],
                          *, batch_size: int, length_bucket: int, pad_id: int) -> list[np.ndarray]:
    """Each continuation's per-token float32 log-probabilities after ``prompt``: the prompt is
    encoded once and the continuations scored ``batch_size`` at a time against its cache."""
    if not continuations:
        return []
    if any(len(c) == 0 for c in continuations):
        raise ValueError("every continuation needs at least one token")
    room = _length_bucket(max(len(c) for c in continuations))
    prefix = prefill(model, prompt, rows=batch_size, room=room,
                     length_bucket=length_bucket, pad_id=pad_id)
    # Shortest first, each batch padded to its own longest (bucketed): little padding.
    order = sorted(range(len(continuations)), key=lambda i: len(continuations[i]))
    results: list[np.ndarray | None] = [None] * len(continuations)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        longest = _length_bucket(max(len(continuations[i]) for i in chunk))
        tokens = np.full((batch_size, longest), pad_id, np.int32)  # (C, L)
        mask = np.zeros((batch_size, longest), bool)
        for row, i in enumerate(chunk):
            tokens[row, : len(continuations[i])] = continuations[i]
            mask[row, : len(continuations[i])] = True
        positions = np.broadcast_to(prefix.prompt_len + np.arange(longest, dtype=np.int32),
                                    tokens.shape)
        picked = np.asarray(_continuations(model, prefix.cache, tokens,
                                           np.ascontiguousarray(positions), mask), np.float32)
        for row, i in enumerate(chunk):
            values = picked[row, : len(continuations[i])].copy()
            values[0] = prefix.first_logprobs[continuations[i][0]]
            results[i] = values
    return results

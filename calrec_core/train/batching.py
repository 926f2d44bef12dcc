"""Token batches for the two towers: padded, bucketed, split into microbatches, host-sliced.

Layout of one user (right padding, P = prompt length, L = target length, S = P + L <= T):

  tokens        BOS h h ... h  [next-item prefix]  t t ... t EOS  pad ...
  history_mask   0  1 1 ... 1          1            0 0 ... 0  0   0     (v^U: prompt minus BOS)
  target_mask    0  0 0 ... 0          0            1 1 ... 1  1   0     (v^TU: target incl. EOS)
  logits_at[j] = P - 1 + j predicts labels[j] = target[j] for j < L (L_NIG)

The item tower reads BOS + the same target ids; v^T pools the target ids (EOS included, BOS
excluded), so v^T and v^TU pool exactly the same tokens. BOS is left out of every mean: its
hidden state is the same for every sequence and would only pull all vectors together.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from calrec_core.template import EncodedExample, encode_example


class Tokenizer(Protocol):
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


class Batch(NamedTuple):
    """Arrays of one batch; leading dims (B,) or, after ``split_microbatches``, (A, B/A)."""

    tokens: np.ndarray  # (B, T) int32 user-tower input: prompt + target, right-padded.
    positions: np.ndarray  # (B, T) int32 0, 1, 2, ...
    input_mask: np.ndarray  # (B, T) bool real tokens.
    history_mask: np.ndarray  # (B, T) bool prompt tokens except BOS (v^U).
    target_mask: np.ndarray  # (B, T) bool target tokens in the user tower (v^TU).
    logits_at: np.ndarray  # (B, K) int32 positions whose logits predict the target tokens.
    labels: np.ndarray  # (B, K) int32 target tokens.
    label_mask: np.ndarray  # (B, K) bool real target tokens.
    item_tokens: np.ndarray  # (B, K + 1) int32 item-tower input: BOS + target.
    item_positions: np.ndarray  # (B, K + 1) int32.
    item_mask: np.ndarray  # (B, K + 1) bool real tokens.
    item_pool_mask: np.ndarray  # (B, K + 1) bool target tokens (v^T).


def bucket_length(longest: int, bucket: int, cap: int) -> int:
    """``longest`` rounded up to a multiple of ``bucket``, at most ``cap``."""
    return min(cap, -(-longest // bucket) * bucket)


class ExampleEncoder:
    """Encodes (history, target) pairs with the §3.2 template, caching segment encodings."""

    def __init__(self, tokenizer: Tokenizer, max_input_len: int, max_target_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_input_len = max_input_len
        self.max_target_len = max_target_len
        # Item texts and template segments repeat across users and steps.
        self._encode: Callable[[str], list[int]] = functools.lru_cache(maxsize=1 << 18)(
            lambda text: list(tokenizer.encode(text))
        )

    def __call__(self, history: Sequence[str], target: str) -> EncodedExample:
        return encode_example(
            self._encode, history, target, bos_id=self.tokenizer.bos_id,
            eos_id=self.tokenizer.eos_id, max_input_len=self.max_input_len,
            max_target_len=self.max_target_len,
        )


def collate(
    examples: Sequence[EncodedExample], *, seq_len: int, target_len: int, bos_id: int, pad_id: int
) -> Batch:
    """Packs encoded examples into fixed-shape arrays (see the module docstring)."""
    size = len(examples)
    tokens = np.full((size, seq_len), pad_id, np.int32)
    input_mask = np.zeros((size, seq_len), bool)
    history_mask = np.zeros((size, seq_len), bool)
    target_mask = np.zeros((size, seq_len), bool)
    logits_at = np.zeros((size, target_len), np.int32)
    labels = np.full((size, target_len), pad_id, np.int32)
    label_mask = np.zeros((size, target_len), bool)
    item_tokens = np.full((size, target_len + 1), pad_id, np.int32)
    item_mask = np.zeros((size, target_len + 1), bool)
    item_pool_mask = np.zeros((size, target_len + 1), bool)
    for row, example in enumerate(examples):
        prompt, target = example.prompt_ids, example.target_ids
        p, n = len(prompt), len(target)
        if not target or p + n > seq_len or n > target_len:
            raise ValueError(f"example {row}: prompt {p} + target {n} does not fit {seq_len}")
        tokens[row, : p + n] = prompt + target
        input_mask[row, : p + n] = True
        history_mask[row, 1:p] = True
        target_mask[row, p : p + n] = True
        logits_at[row, :n] = np.arange(p - 1, p - 1 + n)
        labels[row, :n] = target
        label_mask[row, :n] = True
        item_tokens[row, : n + 1] = [bos_id, *target]
        item_mask[row, : n + 1] = True
        item_pool_mask[row, 1 : n + 1] = True
    positions = np.broadcast_to(np.arange(seq_len, dtype=np.int32), (size, seq_len)).copy()
    item_positions = np.broadcast_to(
        np.arange(target_len + 1, dtype=np.int32), (size, target_len + 1)
    ).copy()
    return Batch(tokens, positions, input_mask, history_mask, target_mask, logits_at, labels,
                 label_mask, item_tokens, item_positions, item_mask, item_pool_mask)


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """(B, ...) -> (A, B / A, ...): consecutive rows form one microbatch."""
    size = batch.tokens.shape[0]
    if size % microbatches:
        raise ValueError(f"batch of {size} does not split into {microbatches} microbatches")
    return Batch(*(array.reshape(microbatches, size // microbatches, *array.shape[1:])
                   for array in batch))


def host_rows(global_batch: int, microbatches: int, process_index: int, process_count: int):
    """Global row indices this host feeds: its contiguous share of every microbatch."""
    per_micro = global_batch // microbatches
    if per_micro % process_count:
        raise ValueError(
            f"microbatch of {per_micro} users does not split over {process_count} hosts"
        )
    share = per_micro // process_count
    return [micro * per_micro + process_index * share + offset
            for micro in range(microbatches) for offset in range(share)]

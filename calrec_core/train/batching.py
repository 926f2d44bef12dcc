"""Token batches for the two towers: padded, bucketed, split into microbatches, host-sliced.

Layout of one user (right padding, P = prompt length, L = target length, S = P + L <= T):

  tokens        BOS h h ... h  [next-item prefix]  t t ... t EOS  pad ...
  history_mask   0  1 1 ... 1          1            0 0 ... 0  0   0     (v^U: prompt minus BOS)
  target_mask    0  0 0 ... 0          0            1 1 ... 1  1   0     (v^TU: target incl. EOS)
  logits_at[j] = P - 1 + j predicts labels[j] = target[j] for j < L (L_NIG)

The item tower reads BOS + the same target ids; v^T pools the target ids (EOS included, BOS
excluded), so v^T and v^TU pool exactly the same tokens. BOS is left out of every mean: its
hidden state is the same for every sequence and would only pull all vectors together.

``pack`` lays out the same users several to a row (first-fit decreasing) so that few computed
tokens are padding: each user is one segment (segment id = 1 + the user's slot), positions
restart at 0 in every segment, and the model attends within a segment only. Items are packed
the same way into shorter rows. Pooling groups tokens by segment id, so v^U, v^TU, v^T and
the target tokens of every user are exactly those of the unpacked layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from calrec_core.template import EncodedExample, encode_example


class TextEncoder(Protocol):
    bos_id: int
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]: ...


class Batch(NamedTuple):
    """Arrays of one batch of U users; leading dims (R,) / (U,), or, after
    ``split_microbatches`` or ``pack``, (A, R) / (A, U) with U users per microbatch.

    Unpacked (``collate``): R = U rows, row u is user u. Packed (``pack``): R rows of several
    users each; segment ids say whose every token is.
    """

    tokens: np.ndarray  # (R, T) int32 user-tower input: prompt + target, right-padded.
    positions: np.ndarray  # (R, T) int32 0, 1, 2, ... restarting in every segment.
    input_mask: np.ndarray  # (R, T) bool real tokens.
    history_mask: np.ndarray  # (R, T) bool prompt tokens except BOS (v^U).
    target_mask: np.ndarray  # (R, T) bool target tokens in the user tower (v^TU).
    logits_at: np.ndarray  # (R, K) int32 positions whose logits predict the target tokens.
    labels: np.ndarray  # (R, K) int32 target tokens.
    label_mask: np.ndarray  # (R, K) bool real target tokens.
    item_tokens: np.ndarray  # (Ri, Ti) int32 item-tower input: BOS + target.
    item_positions: np.ndarray  # (Ri, Ti) int32 restarting in every segment.
    item_mask: np.ndarray  # (Ri, Ti) bool real tokens.
    item_pool_mask: np.ndarray  # (Ri, Ti) bool target tokens (v^T).
    segment_ids: np.ndarray  # (R, T) int32 1 + the token's user slot; 0 = padding.
    item_segment_ids: np.ndarray  # (Ri, Ti) int32 1 + the item's user slot; 0 = padding.
    user_mask: np.ndarray  # (U,) bool real users (validation fills a last batch with copies).


def bucket_length(longest: int, bucket: int, cap: int) -> int:
    """``longest`` rounded up to a multiple of ``bucket``, at most ``cap``."""
    return min(cap, -(-longest // bucket) * bucket)


class ExampleEncoder:
    """Encodes (history, target) pairs with the §3.2 template, caching segment encodings."""

    def __init__(self, tokenizer: TextEncoder, max_input_len: int, max_target_len: int) -> None:
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
    slot = np.arange(1, size + 1, dtype=np.int32)[:, None]
    return Batch(tokens, positions, input_mask, history_mask, target_mask, logits_at, labels,
                 label_mask, item_tokens, item_positions, item_mask, item_pool_mask,
                 segment_ids=np.where(input_mask, slot, 0).astype(np.int32),
                 item_segment_ids=np.where(item_mask, slot, 0).astype(np.int32),
                 user_mask=np.ones(size, bool))


def first_fit_decreasing(lengths: Sequence[int], capacity: int,
                         weights: Sequence[int] | None = None,
                         weight_capacity: int | None = None) -> list[list[int]]:
    """Bins (lists of indices, each in ascending order) holding ``lengths`` within capacity,
    and, when given, ``weights`` (a second size, e.g. target tokens) within weight_capacity.

    Longest first, each into the first bin with room: deterministic, and within 11/9 of the
    fewest bins, so rows of packed sequences are mostly full.
    """
    if weights is None:
        weights, weight_capacity = [0] * len(lengths), 0
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    weight_room: list[int] = []
    for index in order:
        size, weight = lengths[index], weights[index]
        if size > capacity or weight > weight_capacity:
            raise ValueError(f"sequence {index} of {size} tokens ({weight}) exceeds {capacity} "
                             f"({weight_capacity})")
        for b, free in enumerate(room):
            if size <= free and weight <= weight_room[b]:
                bins[b].append(index)
                room[b] -= size
                weight_room[b] -= weight
                break
        else:
            bins.append([index])
            room.append(capacity - size)
            weight_room.append(weight_capacity - weight)
    return [sorted(members) for members in bins]


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def pack_plan(examples: Sequence[EncodedExample], seq_len: int, item_len: int):
    """(user rows, item rows): which users share each user-tower row and item-tower row."""
    user_rows = first_fit_decreasing(
        [len(e.prompt_ids) + len(e.target_ids) for e in examples], seq_len)
    item_rows = first_fit_decreasing([len(e.target_ids) + 1 for e in examples], item_len)
    return user_rows, item_rows


def pack(
    examples: Sequence[EncodedExample], plans, *, seq_len: int, item_len: int, rows: int,
    item_rows: int, target_len: int, bos_id: int, pad_id: int, row_slice: slice = slice(None),
    item_slice: slice = slice(None), user_slice: slice = slice(None),
) -> Batch:
    """Packed (A, rows, ...) arrays of A microbatches of users; see the module docstring.

    ``examples`` holds all A * U users, microbatch-major; ``plans`` is each microbatch's
    ``pack_plan``. ``rows`` / ``item_rows`` / ``target_len`` are the padded row counts and the
    per-row target capacity, equal for every microbatch. The slices pick one host's share of
    the rows and users, so hosts' shares concatenate to the whole batch.
    """
    micro = len(plans)
    users = len(examples) // micro
    shape, item_shape = (micro, rows, seq_len), (micro, item_rows, item_len)
    tokens = np.full(shape, pad_id, np.int32)
    positions = np.zeros(shape, np.int32)
    segment_ids = np.zeros(shape, np.int32)
    history_mask = np.zeros(shape, bool)
    target_mask = np.zeros(shape, bool)
    logits_at = np.zeros((micro, rows, target_len), np.int32)
    labels = np.full((micro, rows, target_len), pad_id, np.int32)
    label_mask = np.zeros((micro, rows, target_len), bool)
    item_tokens = np.full(item_shape, pad_id, np.int32)
    item_positions = np.zeros(item_shape, np.int32)
    item_segment_ids = np.zeros(item_shape, np.int32)
    item_pool_mask = np.zeros(item_shape, bool)
    for a, (user_rows, item_plan) in enumerate(plans):
        for r, members in enumerate(user_rows):
            start = targets = 0
            for u in members:
                example = examples[a * users + u]
                prompt, target = example.prompt_ids, example.target_ids
                p, n = len(prompt), len(target)
                if not target or n > target_len - targets:
                    raise ValueError(f"user {u}: {n} target tokens do not fit row {r}")
                span = slice(start, start + p + n)
                tokens[a, r, span] = prompt + target
                positions[a, r, span] = np.arange(p + n)
                segment_ids[a, r, span] = u + 1
                history_mask[a, r, start + 1 : start + p] = True
                target_mask[a, r, start + p : start + p + n] = True
                logits_at[a, r, targets : targets + n] = np.arange(start + p - 1, start + p + n - 1)
                labels[a, r, targets : targets + n] = target
                label_mask[a, r, targets : targets + n] = True
                start += p + n
                targets += n
        for r, members in enumerate(item_plan):
            start = 0
            for u in members:
                target = examples[a * users + u].target_ids
                n = len(target) + 1
                item_tokens[a, r, start : start + n] = [bos_id, *target]
                item_positions[a, r, start : start + n] = np.arange(n)
                item_segment_ids[a, r, start : start + n] = u + 1
                item_pool_mask[a, r, start + 1 : start + n] = True
                start += n
    batch = Batch(
        tokens, positions, segment_ids > 0, history_mask, target_mask, logits_at, labels,
        label_mask, item_tokens, item_positions, item_segment_ids > 0, item_pool_mask,
        segment_ids, item_segment_ids, np.ones((micro, users), bool),
    )
    row_fields = {"item_tokens", "item_positions", "item_mask", "item_pool_mask",
                  "item_segment_ids"}
    return Batch(*(
        array[:, user_slice] if name == "user_mask"
        else array[:, item_slice] if name in row_fields else array[:, row_slice]
        for name, array in batch._asdict().items()
    ))


def padding_fraction(batch: Batch) -> float:
    """Share of the computed token slots (both towers) that hold padding."""
    slots = batch.input_mask.size + batch.item_mask.size
    real = int(batch.input_mask.sum()) + int(batch.item_mask.sum())
    return 1.0 - real / max(slots, 1)


def split_microbatches(batch: Batch, microbatches: int) -> Batch:
    """(B, ...) -> (A, B / A, ...): consecutive rows form one microbatch."""
    size = batch.tokens.shape[0]
    if size % microbatches:
        raise ValueError(f"batch of {size} does not split into {microbatches} microbatches")
    split = Batch(*(array.reshape(microbatches, size // microbatches, *array.shape[1:])
                    for array in batch))
    # Segment ids name a user's slot within its own microbatch.
    offset = (np.arange(microbatches, dtype=np.int32) * (size // microbatches))[:, None, None]
    return split._replace(**{
        name: np.where(ids > 0, ids - offset, 0).astype(np.int32)
        for name, ids in (("segment_ids", split.segment_ids),
                          ("item_segment_ids", split.item_segment_ids))
    })


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

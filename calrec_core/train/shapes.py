"""Fixed step shapes of packed training: at most three compiled step programs per stage run.

Every packed step is a (rows x seq_len) user-tower grid and an (item_rows x item_len) item-tower
grid per microbatch, each row holding several whole users (``batching.pack``). If the grids
took their size from each step's users, nearly every step would be a new XLA program (a
compile of tens of seconds on an accelerator). Instead a stage run uses a ladder of at most
three shapes, fixed before its first step:

  level 1, level 2   packed grids (full-length rows, per-row target capacity ``target_len``)
                     sized from the users of the stream's first ``PLAN_STEPS`` steps: level 2
                     holds the fullest sampled step with a margin, level 1 is the size that
                     minimises the sampled steps' padding;
  fallback           one user per row at the configured maxima: holds ANY batch, whatever the
                     users drawn (only a step no packed level holds uses it).

A step takes the smallest level its users fit. Every user of a step is in that step's grid,
so each stays an in-batch negative of every other (the user count per microbatch is fixed by
the config; masks mark padding). The ladder is a pure function of the stream's seed and
config, so a resumed run (and every host of a multi-host run) uses the same one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from calrec_core.template import EncodedExample
from calrec_core.train.batching import first_fit_decreasing, round_up

# Steps of the stream whose users size the ladder (the same steps on every host and resume).
PLAN_STEPS = 64
# Longest items one item-tower row holds (its length is this many longest targets + BOS):
# short rows keep the item grid close to the items it needs.
ITEMS_PER_ROW = 2
# Per-row target capacity is a multiple of this.
TARGET_BUCKET = 16
# Headroom of level 2 over the fullest sampled step (its rows and item rows); a step beyond it
# takes the fallback.
MARGIN = 0.03
# Longest packed row tried (tokens): two or three times the longest sequence, up to this.
MAX_ROW_LEN = 3072
# Per-row target capacities tried: these quantiles of the rows' targets in a token-only packing.
TARGET_QUANTILES = (0.5, 0.6, 0.75, 0.9, 1.0)
# Cost of one target slot (a vocabulary projection, forward and backward) in token slots.
TARGET_SLOT_COST = 1.5
# Most sampled padding (share of token slots) a target capacity may cost; fewer target slots
# are bought with more rows only below it.
PADDING_GOAL = 0.1


@dataclasses.dataclass(frozen=True)
class StepShape:
    """One compiled step program's batch geometry, per microbatch."""

    rows: int  # User-tower rows.
    seq_len: int  # Tokens per user-tower row.
    item_rows: int  # Item-tower rows.
    item_len: int  # Tokens per item-tower row.
    target_len: int  # Target tokens (logit positions) per user-tower row.
    packed: bool  # False: the fallback, one user per row.

    def slots(self) -> int:
        """Token slots computed by both towers (what padding is a share of)."""
        return self.rows * self.seq_len + self.item_rows * self.item_len

    def key(self) -> tuple[int, int, int, int, int]:
        return (self.rows, self.seq_len, self.item_rows, self.item_len, self.target_len)


def _lengths(example: EncodedExample) -> tuple[int, int]:
    return len(example.prompt_ids) + len(example.target_ids), len(example.target_ids)


def balance(examples: Sequence[EncodedExample], microbatches: int) -> list[list[EncodedExample]]:
    """The step's users split into ``microbatches`` lists of equal count and nearly equal
    tokens (longest first, each to the lightest microbatch with a free slot), so the step's
    shape is that of an average microbatch, not of its fullest. Which microbatch holds a user
    changes nothing: the contrastive losses see every user of the step (two-pass step)."""
    users = len(examples) // microbatches
    if microbatches == 1:
        return [list(examples)]
    parts: list[list[EncodedExample]] = [[] for _ in range(microbatches)]
    tokens = [0] * microbatches
    for index in sorted(range(len(examples)), key=lambda i: (-sum(_lengths(examples[i])), i)):
        a = min((a for a in range(microbatches) if len(parts[a]) < users),
                key=lambda a: (tokens[a], a))
        parts[a].append(examples[index])
        tokens[a] += sum(_lengths(examples[index]))
    return parts


def pack_users(examples: Sequence[EncodedExample], shape: StepShape):
    """(user rows, item rows) of one microbatch laid out for ``shape``: lists of user slots per
    row (first-fit decreasing within the row's token and target capacities)."""
    if not shape.packed:
        user_rows = [[u] for u in range(len(examples))]
    else:
        sizes = [_lengths(e) for e in examples]
        user_rows = first_fit_decreasing([s for s, _ in sizes], shape.seq_len,
                                         [t for _, t in sizes], shape.target_len)
    item_rows = first_fit_decreasing([len(e.target_ids) + 1 for e in examples], shape.item_len)
    return user_rows, item_rows


@dataclasses.dataclass(frozen=True)
class ShapeLadder:
    """At most three step shapes, smallest first; the last always holds any batch."""

    levels: tuple[StepShape, ...]

    def fit(self, microbatches: Sequence[Sequence[EncodedExample]]):
        """(shape, per-microbatch plans): the smallest level all microbatches fit."""
        plans_of: dict[tuple[int, bool], list] = {}
        for shape in self.levels:
            layout = (shape.target_len, shape.packed)
            if layout not in plans_of:
                plans_of[layout] = [pack_users(users, shape) for users in microbatches]
            plans = plans_of[layout]
            if (max(len(p[0]) for p in plans) <= shape.rows
                    and max(len(p[1]) for p in plans) <= shape.item_rows):
                return shape, plans
        raise AssertionError("the fallback shape holds every batch")  # pragma: no cover

    def describe(self) -> list[dict]:
        return [dataclasses.asdict(level) for level in self.levels]

    def packed_levels(self) -> tuple[tuple[int, ...], ...]:
        """The packed levels as TrainConfig.step_shapes takes them."""
        return tuple(level.key() for level in self.levels if level.packed)


def ladder_from(levels: Sequence[Sequence[int]], users: int, max_sequence_len: int,
                max_target_len: int, row_multiple: int = 1) -> ShapeLadder:
    """The ladder of given packed levels ((rows, seq_len, item_rows, item_len, target_len)
    each, as ``ShapeLadder.packed_levels`` lists them) and the fallback."""
    packed = [StepShape(*map(int, level), packed=True) for level in levels]
    if len(packed) > 2 or any(level.rows % row_multiple or level.item_rows % row_multiple
                              for level in packed):
        raise ValueError(f"step_shapes {list(levels)}: at most two packed levels, rows and "
                         f"item rows multiples of {row_multiple}")
    fallback = fallback_shape(users, max_sequence_len, max_target_len, row_multiple)
    return ShapeLadder(tuple([*packed, fallback]))


def fallback_shape(users: int, max_sequence_len: int, max_target_len: int,
                   row_multiple: int) -> StepShape:
    """One user per row at the configured maxima: holds any microbatch of ``users`` users.
    Every item is at most 1 / ITEMS_PER_ROW of an item row, so first-fit fills each row with
    ITEMS_PER_ROW items before opening the next: ceil(users / ITEMS_PER_ROW) rows suffice."""
    return StepShape(
        rows=round_up(users, row_multiple), seq_len=max_sequence_len,
        item_rows=round_up(math.ceil(users / ITEMS_PER_ROW), row_multiple),
        item_len=ITEMS_PER_ROW * (max_target_len + 1), target_len=max_target_len, packed=False)


def plan_ladder(sample: Sequence[Sequence[Sequence[EncodedExample]]], *, max_sequence_len: int,
                max_target_len: int, row_multiple: int = 1) -> ShapeLadder:
    """The ladder for steps like ``sample`` (each step: its microbatches' encoded users): the
    per-row target capacity and two packed levels of least sampled cost (token slots plus
    TARGET_SLOT_COST per target slot) among those padding at most PADDING_GOAL of the token
    slots (else those of least padding), then the fallback."""
    users = max(len(micro) for step in sample for micro in step)
    fallback = fallback_shape(users, max_sequence_len, max_target_len, row_multiple)
    real = sum(sum(_lengths(e)[0] + _lengths(e)[1] + 1 for e in micro)
               for step in sample for micro in step)
    options = []
    # Rows of two or three maximal sequences waste less at the end of each row (first-fit
    # leaves a gap of about half a user per row); longer rows cost only the global layers'
    # attention.
    row_lengths = {max_sequence_len, *(min(k * max_sequence_len, MAX_ROW_LEN) for k in (2, 3))}
    for seq_len in sorted(row_lengths):
        row_targets = sorted(
            sum(_lengths(micro[u])[1] for u in members)
            for step in sample for micro in step
            for members in first_fit_decreasing([_lengths(e)[0] for e in micro], seq_len))
        candidates = sorted({
            min(round_up(max(row_targets[min(len(row_targets) - 1, int(q * len(row_targets)))],
                             max_target_len), TARGET_BUCKET), round_up(seq_len, TARGET_BUCKET))
            for q in TARGET_QUANTILES})
        for target_len in candidates:
            probe = dataclasses.replace(fallback, packed=True, seq_len=seq_len,
                                        target_len=target_len)
            levels, fits = _levels(sample, probe, fallback, row_multiple)
            slots = sum(levels[level].slots() for level in fits) * len(sample[0])
            cost = sum(_cost(levels[level]) for level in fits)
            options.append((max(PADDING_GOAL, 1 - real / slots), cost, seq_len, target_len,
                            levels))
    return ShapeLadder(tuple([*min(options)[-1], fallback]))


def _cost(shape: StepShape) -> float:
    return shape.slots() + TARGET_SLOT_COST * shape.rows * shape.target_len


def _levels(sample, probe: StepShape, fallback: StepShape, row_multiple: int):
    """(the one or two packed levels of least sampled cost with ``probe``'s row capacities,
    the level each sampled step takes)."""
    needs = []  # (rows, item rows) each sampled step needs
    for step in sample:
        plans = [pack_users(micro, probe) for micro in step]
        needs.append((max(len(p[0]) for p in plans), max(len(p[1]) for p in plans)))
    top = dataclasses.replace(
        probe,
        rows=min(fallback.rows, round_up(math.ceil(max(r for r, _ in needs) * (1 + MARGIN)),
                                          row_multiple)),
        item_rows=min(fallback.item_rows, round_up(
            math.ceil(max(i for _, i in needs) * (1 + MARGIN)), row_multiple)))
    best, best_cost = top, _cost(top) * len(needs)
    for rows in sorted({round_up(r, row_multiple) for r, _ in needs}):
        for item_rows in sorted({round_up(i, row_multiple) for _, i in needs}):
            if rows > top.rows or item_rows > top.item_rows:
                continue
            low = dataclasses.replace(top, rows=rows, item_rows=item_rows)
            cost = sum(_cost(low) if r <= rows and i <= item_rows else _cost(top)
                       for r, i in needs)
            if cost < best_cost:
                best, best_cost = low, cost
    if best == top:
        return [top], [0] * len(needs)
    return [best, top], [0 if r <= best.rows and i <= best.item_rows else 1 for r, i in needs]

"""Training examples: which user sequences a stage reads, and the drop-last-k augmentation.

Only the ``train`` split is ever read for training examples; ``valid`` and ``test`` hold the
held-out targets and are read only by ``validation_examples`` (model selection). Augmentation
only truncates a training sequence, so nothing later than it can reach a training example.
"""

from __future__ import annotations

import dataclasses
import logging
import zlib
from collections.abc import Mapping, Sequence

import numpy as np

logger = logging.getLogger(__name__)

TRAIN_SPLIT = "train"
VALID_SPLIT = "valid"


@dataclasses.dataclass(frozen=True)
class CategorySequences:
    """The training sequences of one category (users with at least two items)."""

    category: str  # Category name, as in the ingested data folder.
    user_ids: tuple[str, ...]  # One per sequence, sorted (the reader's order).
    texts: tuple[tuple[str, ...], ...]  # Item texts of each user, oldest first.
    skipped_short: int = 0  # Users dropped (counted) because one item cannot form an example.

    def __len__(self) -> int:
        return len(self.texts)


@dataclasses.dataclass(frozen=True)
class ExampleRef:
    """One sampled training example: whose sequence, and how many last items to drop."""

    category: str
    user_index: int
    drop_last: int


def category_roles(data_dir, categories: Sequence[str]) -> dict[str, str]:
    """Each category's role, read off its splits (test => eval, valid => validation)."""
    from calrec_core.data import has_split

    roles = {}
    for category in categories:
        if has_split(data_dir, category, "test"):
            roles[category] = "eval"
        elif has_split(data_dir, category, VALID_SPLIT):
            roles[category] = "validation"
        else:
            roles[category] = "pretrain"
    return roles


def load_training_sequences(data_dir, categories: Sequence[str]) -> dict[str, CategorySequences]:
    """Reads the ``train`` split of each category; fails clearly when one has no usable data."""
    from calrec_core.data import read_examples

    sequences = {}
    for category in categories:
        try:
            records = read_examples(data_dir, category, TRAIN_SPLIT)
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"no training data for category {category!r}: {error}") from None
        usable = [record for record in records if len(record["texts"]) >= 2]
        skipped = len(records) - len(usable)
        if skipped:
            logger.warning("%s: %d training users with one item skipped", category, skipped)
        if not usable:
            raise ValueError(f"category {category!r} has no training user with two or more items")
        sequences[category] = CategorySequences(
            category=category,
            user_ids=tuple(record["user_id"] for record in usable),
            texts=tuple(tuple(record["texts"]) for record in usable),
            skipped_short=skipped,
        )
    return sequences


def validation_examples(
    data_dir, category: str, max_users: int = 0, seed: int = 0
) -> list[tuple[tuple[str, ...], str]]:
    """(history, target) pairs of the ``valid`` split: every user, or (max_users > 0) a uniform
    sample of that many drawn from the seed and the category (calrec_core.user_sample)."""
    from calrec_core.data import read_examples
    from calrec_core.user_sample import sample_users

    records = sample_users(read_examples(data_dir, category, VALID_SPLIT), max_users, seed,
                           category)
    return [(tuple(record["texts"][:-1]), record["texts"][-1]) for record in records]


def augment(texts: Sequence[str], drop_last: int) -> tuple[tuple[str, ...], str]:
    """Drops the last ``drop_last`` items; the last remaining item is the target (§4)."""
    kept = len(texts) - drop_last
    if drop_last < 0 or kept < 2:
        raise ValueError(
            f"cannot drop {drop_last} of {len(texts)} items and keep a history item and a target"
        )
    return tuple(texts[: kept - 1]), texts[kept - 1]


def _stream_id(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


class MixtureSampler:
    """Draws the examples of a global batch as a pure function of (seed, stream, step).

    Each batch slot has its own generator, seeded by (seed, stream, step, slot), so a resumed
    run draws the same batches as an uninterrupted one. Categories are drawn at ``weights``
    (Stage I: |U|^0.3), users uniformly within a category WITHOUT replacement within a step
    (the j-th slot of a step that draws category c takes entry j of a random permutation of
    c's users, seeded by (seed, stream, step, c); only past |c| users does a fresh permutation
    repeat them), and k uniformly in {0, ..., min(max_drop_last, n - 2)}.
    """

    def __init__(
        self,
        sequences: Mapping[str, CategorySequences],
        weights: Mapping[str, float],
        *,
        seed: int,
        stream: str,
        max_drop_last: int,
    ) -> None:
        missing = sorted(set(sequences) - set(weights))
        if missing:
            raise ValueError(f"no mixture weight for categories {missing}")
        self.sequences = dict(sequences)
        self.categories = sorted(self.sequences)
        raw = np.array([float(weights[name]) for name in self.categories], dtype=np.float64)
        if not np.all(np.isfinite(raw)) or np.any(raw < 0) or raw.sum() <= 0:
            raise ValueError(f"bad mixture weights {dict(zip(self.categories, raw, strict=True))}")
        self.probabilities = raw / raw.sum()
        self.seed = int(seed)
        self.stream = _stream_id(stream)
        self.max_drop_last = int(max_drop_last)
        self._step_categories: tuple[int, list[int]] = (-1, [])  # This step's slots so far.
        self._permutations: dict[tuple[int, int, int], np.ndarray] = {}

    def _slot_rng(self, step: int, slot: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.stream, int(step), int(slot)])

    def _category_of(self, step: int, slot: int) -> int:
        """The category index slot ``slot`` of ``step`` draws (its generator's first draw)."""
        if self._step_categories[0] != step:
            self._step_categories = (step, [])
            self._permutations.clear()
        drawn = self._step_categories[1]
        while len(drawn) <= slot:
            rng = self._slot_rng(step, len(drawn))
            drawn.append(int(rng.choice(len(self.categories), p=self.probabilities)))
        return drawn[slot]

    def example(self, step: int, slot: int) -> ExampleRef:
        rng = self._slot_rng(step, slot)
        index = int(rng.choice(len(self.categories), p=self.probabilities))
        self._category_of(step, slot)
        rank = self._step_categories[1][:slot].count(index)  # Earlier slots of this category.
        category = self.categories[index]
        sequences = self.sequences[category]
        cycle, position = divmod(rank, len(sequences))
        key = (int(step), index, cycle)
        if key not in self._permutations:
            seeded = np.random.default_rng([self.seed, self.stream, int(step),
                                            _stream_id(category), cycle])
            self._permutations[key] = seeded.permutation(len(sequences))
        user_index = int(self._permutations[key][position])
        most = min(self.max_drop_last, len(sequences.texts[user_index]) - 2)
        return ExampleRef(category, user_index, int(rng.integers(most + 1)))

    def texts(self, ref: ExampleRef) -> tuple[tuple[str, ...], str]:
        """(history, target) of a sampled example."""
        return augment(self.sequences[ref.category].texts[ref.user_index], ref.drop_last)

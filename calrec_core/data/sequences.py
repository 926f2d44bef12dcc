"""A user's events -> chronological, strictly deduplicated sequence -> per-role splits.

Pure functions, shared by the Beam transforms and by tests' independent references.
"""

from __future__ import annotations

import hashlib
import operator
from collections.abc import Iterable, Sequence

from calrec_core.data.raw import Review

# By field position, so a plain tuple of a Review's fields (what ingestion moves between its
# stages: Beam pickles a NamedTuple) works as well as a Review.
_TIME_AND_LINE = operator.itemgetter(*map(Review._fields.index, ("timestamp", "line")))
_dedup_key = operator.itemgetter(
    *map(Review._fields.index, ("asin", "text_digest", "rating", "timestamp")))


def chronological(events: Iterable[Review]) -> list[Review]:
    """Sorted by unixReviewTime; ties keep file order (line), so any runner agrees."""
    return sorted(events, key=_TIME_AND_LINE)


def strict_dedup(events: Sequence[Review]) -> tuple[list[Review], int]:
    """Drops an event equal to the previous kept one in asin, reviewText, overall and time.

    CALRec §4: repeats that differ in any of the four (e.g. a later re-purchase) stay.
    Returns (kept events, number dropped).
    """
    kept: list[Review] = []
    previous = None
    for event in events:
        key = _dedup_key(event)
        if key != previous:
            kept.append(event)
            previous = key
    return kept, len(events) - len(kept)


def user_is_sampled(seed: int, category: str, user_id: str, rate: float) -> bool:
    """Hash-based user sampling: the same (seed, category, user) always gives the same answer."""
    if rate >= 1.0:
        return True
    digest = hashlib.blake2b(f"{seed}\x1f{category}\x1f{user_id}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big") / 2.0**64 < rate


def split_lengths(length: int, role: str) -> dict[str, int]:
    """How many of a sequence's ``length`` events each split of a role sees (split_by_role)."""
    return {
        "pretrain": {"train": length},
        "validation": {"train": length - 1, "valid": length},
        "eval": {"train": length - 2, "valid": length - 1, "test": length},
    }[role]


def split_by_role(events: Sequence, role: str) -> dict[str, list]:
    """The prefix of the sequence each split of a role sees (target = last element).

    pretrain: train = all n; validation: train = 1..n-1, valid = 1..n;
    eval: train = 1..n-2, valid = 1..n-1 (target n-1), test = 1..n (target n).
    """
    return {split: list(events[:length])
            for split, length in split_lengths(len(events), role).items()}

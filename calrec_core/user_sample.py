"""Which users a capped evaluation scores: a seeded uniform sample, never the first N by id.

The first users by id are not a random set (on a real category the first 1,500 have longer
histories than the rest), so a cap takes a uniform sample without replacement, drawn from the
seed and the category name: the same users for every method, every evaluation of a run and
every resume, and independent samples for different categories.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def sample_users(records: Sequence[T], max_users: int | None, seed: int, category: str,
                 key=lambda record: record["user_id"]) -> list[T]:
    """``records`` ordered by ``key`` (the user id), or, when ``max_users`` is set and smaller
    than their number, a uniform sample of ``max_users`` of them, kept in that order."""
    ordered = sorted(records, key=key)
    if not max_users or max_users >= len(ordered):
        return ordered
    rng = np.random.default_rng([int(seed), zlib.crc32(category.encode("utf-8"))])
    chosen = np.sort(rng.choice(len(ordered), size=max_users, replace=False))
    return [ordered[i] for i in chosen]

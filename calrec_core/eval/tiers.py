"""Two-tier catalog scores: some items ranked by the model, every other item after them.

Scores become dense ranks (exact integers in float64), so the model's items all sit above the
rest, each tier keeps its own order, and exactly equal scores stay tied: the tie-aware metrics
then report them as ties (opt / pes) instead of an order chosen by catalog position.
"""

from __future__ import annotations

import numpy as np


def _dense_ranks(values: np.ndarray) -> np.ndarray:
    """0 for the lowest value, equal values equal ranks."""
    return np.unique(values, return_inverse=True)[1].reshape(-1).astype(np.float64)


def tiered_scores(rows: np.ndarray, values: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(N_c,) scores: ``rows`` ranked by ``values`` above every other row, the others by
    ``rest`` (N_c,). A row listed twice keeps its best value; a non-finite value leaves its
    row to the rest."""
    rows = np.asarray(rows, np.int64)
    values = np.asarray(values, np.float64)
    keep = np.isfinite(values)
    rows, values = rows[keep], values[keep]
    best: dict[int, float] = {}
    for row, value in zip(rows.tolist(), values.tolist(), strict=True):
        best[row] = max(best.get(row, -np.inf), value)
    scores = _dense_ranks(np.asarray(rest, np.float64))
    if best:
        top = np.fromiter(best, np.int64, len(best))
        scores[top] = scores.max() + 1 + _dense_ranks(np.asarray(list(best.values())))
    return scores


def pool_rows(scores: np.ndarray, size: int) -> np.ndarray:
    """Rows of the ``size`` best scores, never cutting a tie at random: the items tied at the
    cut come along while the pool stays within 2 x ``size``, else none of them do. Items
    at the catalog's lowest score (no evidence at all, e.g. no shared term) are left out."""
    scores = np.asarray(scores, np.float64)
    if size >= scores.shape[0]:
        cut = scores.min()
    else:
        cut = np.partition(scores, scores.shape[0] - size)[scores.shape[0] - size]
    above = scores > cut
    at_cut = scores == cut
    chosen = above | at_cut if above.sum() + at_cut.sum() <= 2 * size else above
    chosen &= scores > scores.min()
    return np.flatnonzero(chosen)

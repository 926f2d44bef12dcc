"""Tie-aware ranking metrics (CALRec §4, footnote 12) and the paired t-test of Table 4.

With fused scores s and the target's score s_t, ties between the target and other items
are broken in the target's favour (optimistic) or against it (pessimistic):

    rank_opt = 1 + #(s > s_t)        rank_pes = #(s >= s_t)

NDCG@10 = 1 / log2(1 + rank) when rank <= 10; Recall@K = [rank <= K]; MRR = 1 / rank over
the full ranking. A target missing from the corpus can never be retrieved: every metric 0.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

METRIC_NAMES = ("ndcg@10", "recall@1", "recall@10", "mrr")
VARIANTS = ("opt", "pes")
# Prefix of the metrics of the ranking with the user's own history items moved last (a
# quality lever; the paper ranks the full catalog, the unprefixed metrics).
NO_HISTORY = "nohist_"
# Per user: 1 when one of their own history items is in the full ranking's top 10.
HISTORY_IN_TOP = "history_in_top10"


@dataclasses.dataclass(frozen=True)
class TargetRanks:
    """1-based ranks of one target among all corpus items (None: not in the corpus)."""

    opt: int | None  # Ties resolved with the target first.
    pes: int | None  # Ties resolved with the target last.


def target_ranks(scores: np.ndarray, target_index: int | None) -> TargetRanks:
    """Optimistic and pessimistic ranks of scores[target_index] in the (N_c,) scores."""
    if target_index is None:
        return TargetRanks(None, None)
    # A NaN score compares false with everything (rank_pes would be 0): rank it last.
    scores = np.where(np.isnan(scores), -np.inf, scores)
    target_score = scores[target_index]
    return TargetRanks(
        opt=1 + int(np.count_nonzero(scores > target_score)),
        pes=int(np.count_nonzero(scores >= target_score)),
    )


def metrics_at_rank(rank: int | None) -> dict[str, float]:
    """NDCG@10, Recall@1, Recall@10 and MRR of one target at a 1-based rank."""
    if rank is None:
        return dict.fromkeys(METRIC_NAMES, 0.0)
    return {
        "ndcg@10": 1.0 / math.log2(1 + rank) if rank <= 10 else 0.0,
        "recall@1": float(rank <= 1),
        "recall@10": float(rank <= 10),
        "mrr": 1.0 / rank,
    }


def user_metrics(ranks: TargetRanks, prefix: str = "") -> dict[str, float]:
    """Per-user metric dict with keys like 'ndcg@10_opt' and 'mrr_pes' (after ``prefix``)."""
    out: dict[str, float] = {}
    for variant, rank in (("opt", ranks.opt), ("pes", ranks.pes)):
        for name, value in metrics_at_rank(rank).items():
            out[f"{prefix}{name}_{variant}"] = value
    return out


def metric_columns(prefix: str = "") -> list[str]:
    return [f"{prefix}{name}_{variant}" for name in METRIC_NAMES for variant in VARIANTS]


def mean_metrics(per_user: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Averages every metric column over users (0.0 for no users); the history-excluded
    columns and the history-in-top-10 share too when the rows carry them."""
    columns = metric_columns()
    if not per_user:
        return dict.fromkeys(columns, 0.0)
    extra = [*metric_columns(NO_HISTORY), HISTORY_IN_TOP]
    columns += [c for c in extra if all(c in row for row in per_user)]
    return {c: float(np.mean([row[c] for row in per_user])) for c in columns}


def paired_t_test(
    first: Mapping[str, float], second: Mapping[str, float]
) -> dict[str, float]:
    """scipy.stats.ttest_rel over users present in both runs (keyed by user id).

    Returns {"num_users", "mean_first", "mean_second", "t", "p_value"}; a run pair with
    identical values gives t = nan and p = nan, as scipy does.
    """
    from scipy import stats

    shared = sorted(set(first) & set(second))
    if len(shared) < 2:
        raise ValueError(f"a paired t-test needs >= 2 shared users, got {len(shared)}")
    a = np.array([first[u] for u in shared], dtype=np.float64)
    b = np.array([second[u] for u in shared], dtype=np.float64)
    result = stats.ttest_rel(a, b)
    return {
        "num_users": len(shared),
        "mean_first": float(a.mean()),
        "mean_second": float(b.mean()),
        "t": float(result.statistic),
        "p_value": float(result.pvalue),
    }

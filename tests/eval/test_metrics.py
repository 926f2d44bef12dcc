"""Tie-aware metrics: footnote 12's extreme case, hand-made rankings vs a sort-based loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from calrec_core.eval.metrics import (
    mean_metrics,
    metrics_at_rank,
    paired_t_test,
    target_ranks,
    user_metrics,
)


def sorted_ranks(scores, target):
    """Ranks from explicit sorts: target placed before / after its equal-score items."""
    items = list(range(len(scores)))
    opt = sorted(items, key=lambda i: (-scores[i], i != target))
    pes = sorted(items, key=lambda i: (-scores[i], i == target))
    return opt.index(target) + 1, pes.index(target) + 1


def test_all_equal_scores_footnote_12():
    ranks = target_ranks(np.zeros(50), 17)
    assert (ranks.opt, ranks.pes) == (1, 50)
    metrics = user_metrics(ranks)
    assert metrics["recall@1_opt"] == metrics["recall@10_opt"] == 1.0
    assert metrics["recall@1_pes"] == metrics["recall@10_pes"] == 0.0
    assert metrics["mrr_pes"] == pytest.approx(1 / 50)


def test_ranks_match_sort_based_loop_on_tied_scores():
    rng = np.random.default_rng(1)
    for _ in range(200):
        scores = rng.integers(0, 4, size=rng.integers(1, 30)).astype(float)
        target = int(rng.integers(len(scores)))
        ranks = target_ranks(scores, target)
        assert (ranks.opt, ranks.pes) == sorted_ranks(scores, target)


def test_metric_values_at_given_ranks():
    assert metrics_at_rank(1) == {"ndcg@10": 1.0, "recall@1": 1.0, "recall@10": 1.0, "mrr": 1.0}
    third = metrics_at_rank(3)
    assert third["ndcg@10"] == pytest.approx(1 / math.log2(4))
    assert (third["recall@1"], third["recall@10"], third["mrr"]) == (0.0, 1.0, pytest.approx(1 / 3))
    eleventh = metrics_at_rank(11)
    assert (eleventh["ndcg@10"], eleventh["recall@10"]) == (0.0, 0.0)
    assert metrics_at_rank(None) == dict.fromkeys(["ndcg@10", "recall@1", "recall@10", "mrr"], 0.0)


def test_pessimistic_never_exceeds_optimistic():
    rng = np.random.default_rng(2)
    rows = []
    for _ in range(100):
        scores = rng.integers(0, 3, size=20).astype(float)
        rows.append(user_metrics(target_ranks(scores, int(rng.integers(20)))))
    means = mean_metrics(rows)
    for name in ("ndcg@10", "recall@1", "recall@10", "mrr"):
        assert means[f"{name}_pes"] <= means[f"{name}_opt"]
        assert all(r[f"{name}_pes"] <= r[f"{name}_opt"] for r in rows)


def test_paired_t_test_agrees_with_differences_one_sample_test():
    from scipy import stats

    rng = np.random.default_rng(4)
    first = {f"u{i}": float(v) for i, v in enumerate(rng.random(30))}
    second = {u: v - 0.1 + 0.05 * rng.standard_normal() for u, v in first.items()}
    second["only_in_second"] = 1.0
    result = paired_t_test(first, second)
    diffs = [first[u] - second[u] for u in sorted(first)]
    expected = stats.ttest_1samp(diffs, 0.0)
    assert result["num_users"] == 30
    assert result["p_value"] == pytest.approx(float(expected.pvalue))
    assert result["p_value"] < 0.05
    with pytest.raises(ValueError, match="shared users"):
        paired_t_test({"a": 1.0}, {"a": 2.0})


def test_top_items_breaks_ties_in_corpus_order():
    from calrec_core.eval.scoring import top_items

    scores = np.array([0.0, 2.0, 2.0, 1.0, 2.0, 3.0])
    assert top_items(scores, 3).tolist() == [5, 1, 2]
    assert top_items(scores, 10).tolist() == [5, 1, 2, 4, 3, 0]
    assert top_items(np.zeros(4), 2).tolist() == [0, 1]

"""Algorithm 1 against a literal loop, on hand-built matrices and on rank-bm25 columns."""

from __future__ import annotations

import math

import numpy as np
from rank_bm25 import BM25Okapi

from calrec_core.eval.bm25 import BM25Index, tokenize
from calrec_core.eval.fusion import (
    fuse_scores,
    min_max_scale_columns,
    quasi_round_robin,
    select_samples,
)


def naive_algorithm_1(samples, logprobs, corpus, n_preds, epsilon):
    """Algorithm 1 written out with plain loops and rank-bm25."""
    pairs = sorted(zip(samples, logprobs, strict=True), key=lambda p: p[1], reverse=True)
    unique = []
    for text, logprob in pairs:
        if text.strip() not in [u[0] for u in unique]:
            unique.append((text.strip(), logprob))
    top = unique[:n_preds]
    reference = BM25Okapi([tokenize(d) for d in corpus])
    candidate = [0.0] * len(corpus)
    for text, logprob in top:
        column = list(reference.get_scores(tokenize(text)))
        low, high = min(column), max(column)
        for j, value in enumerate(column):
            scaled = (value - low) / (high - low) if high > low else 0.0
            candidate[j] = max(candidate[j], math.exp(epsilon * logprob) * scaled)
    return np.array(candidate)


def test_select_samples_sorts_stably_dedups_and_truncates():
    texts = ["a", "b", "a ", "c", "d", "b"]
    logprobs = [-1.0, -0.5, -0.2, -3.0, -0.5, -9.0]
    selected = select_samples(texts, logprobs, n_preds=3)
    # "a " (-0.2) wins over "a" (-1.0); "b" and "d" tie at -0.5 and keep input order.
    assert selected.texts == ["a", "b", "d"]
    assert selected.logprobs == [-0.2, -0.5, -0.5]


def test_constant_columns_scale_to_zero_and_others_span_unit_interval():
    matrix = np.array([[0.0, 2.0, 5.0], [0.0, 4.0, 5.0], [0.0, 3.0, 5.0]])
    scaled = min_max_scale_columns(matrix)
    np.testing.assert_array_equal(scaled[:, 0], [0, 0, 0])
    np.testing.assert_allclose(scaled[:, 1], [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(scaled[:, 2], [0, 0, 0])


def test_fusion_is_round_robin_over_each_samples_best_match():
    # Item 0 is sample 0's best, item 2 sample 1's best; sample 0 has the higher logprob.
    bm25 = np.array([[9.0, 1.0], [3.0, 0.0], [0.0, 7.0], [1.0, 6.0]])
    fused = fuse_scores(bm25, [-1.0, -4.0], epsilon=1 / 5000)
    assert list(np.argsort(-fused, kind="stable")[:2]) == [0, 2]
    assert fused[0] == math.exp(-1 / 5000)
    assert fuse_scores(np.zeros((4, 0)), [], epsilon=0.1).tolist() == [0.0] * 4


def test_matches_naive_loop_on_random_hand_built_corpus():
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(30)]
    corpus = [" ".join(rng.choice(words, size=rng.integers(1, 8))) for _ in range(40)]
    index = BM25Index(corpus)
    for trial in range(5):
        samples = [" ".join(rng.choice(words + ["oov"], size=rng.integers(0, 5)))
                   for _ in range(12)]
        samples[3] = samples[1]  # a duplicate generation
        logprobs = list(rng.uniform(-10, 0, size=12).round(1))  # rounding makes ties
        ours = quasi_round_robin(index, samples, logprobs, n_preds=5, epsilon=0.3 * trial)
        expected = naive_algorithm_1(samples, logprobs, corpus, 5, 0.3 * trial)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)

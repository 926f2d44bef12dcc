"""Quasi-round-robin BM25 fusion of sampled generations (CALRec §3.5, Algorithm 1)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from calrec_core.eval.bm25 import BM25Index


@dataclasses.dataclass(frozen=True)
class SelectedSamples:
    """Algorithm 1 lines 1-4: unique samples by descending sequence log-probability."""

    texts: list[str]  # At most N_preds unique generations, best first.
    logprobs: list[float]  # Their sequence log-probabilities.


def select_samples(
    texts: Sequence[str], logprobs: Sequence[float], n_preds: int
) -> SelectedSamples:
    """Sorts by log-probability (descending, stable), drops repeats, keeps the top n_preds.

    Duplicates are compared after stripping surrounding whitespace; the first (highest
    scoring) copy is kept.
    """
    if len(texts) != len(logprobs):
        raise ValueError(f"{len(texts)} samples but {len(logprobs)} log-probabilities")
    order = sorted(range(len(texts)), key=lambda i: -float(logprobs[i]))  # stable
    seen: set[str] = set()
    kept_texts: list[str] = []
    kept_logprobs: list[float] = []
    for i in order:
        text = texts[i].strip()
        if text in seen:
            continue
        seen.add(text)
        kept_texts.append(text)
        kept_logprobs.append(float(logprobs[i]))
        if len(kept_texts) == n_preds:
            break
    return SelectedSamples(kept_texts, kept_logprobs)


def min_max_scale_columns(matrix: np.ndarray) -> np.ndarray:
    """Scales each column of (N_c, P) linearly onto [0, 1].

    A constant column (e.g. a query with no corpus term: all zeros) carries no ranking
    information and becomes all zeros, so it never outweighs a real match.
    """
    low = matrix.min(axis=0, keepdims=True)  # (1, P)
    span = matrix.max(axis=0, keepdims=True) - low  # (1, P)
    safe_span = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (matrix - low) / safe_span, 0.0)  # (N_c, P)


def fuse_scores(bm25_scores: np.ndarray, logprobs: Sequence[float], epsilon: float) -> np.ndarray:
    """Algorithm 1 lines 8-11: scale columns, modulate by exp(eps * logprob), max-pool.

    bm25_scores: (N_c, P) raw scores, one column per kept sample. Returns (N_c,); with no
    samples every item scores 0 (footnote 12's all-ties case).
    """
    num_items, num_preds = bm25_scores.shape
    if num_preds == 0:
        return np.zeros(num_items, dtype=np.float64)
    if len(logprobs) != num_preds:
        raise ValueError(f"{num_preds} score columns but {len(logprobs)} log-probabilities")
    modulation = np.exp(epsilon * np.asarray(logprobs, dtype=np.float64))  # (P,)
    scaled = min_max_scale_columns(bm25_scores) * modulation[None, :]  # (N_c, P)
    return scaled.max(axis=1)  # (N_c,)


def quasi_round_robin(
    index: BM25Index,
    texts: Sequence[str],
    logprobs: Sequence[float],
    *,
    n_preds: int,
    epsilon: float,
) -> np.ndarray:
    """Algorithm 1 end to end: (N_c,) fused candidate scores for one user's samples."""
    selected = select_samples(texts, logprobs, n_preds)
    return fuse_scores(index.scores(selected.texts), selected.logprobs, epsilon)

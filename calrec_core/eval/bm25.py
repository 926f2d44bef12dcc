"""Vectorised BM25 (Okapi) over an item corpus, scoring exactly like rank-bm25's BM25Okapi.

rank-bm25 scores one query by looping over the corpus in Python; here the per-(term, item)
weights are precomputed into a sparse term-by-item matrix, so a batch of queries is one
sparse product. Scoring follows ``rank_bm25.BM25Okapi`` with its defaults:

    idf(t)   = ln(N - df + 0.5) - ln(df + 0.5), negative values replaced by
               epsilon * mean(idf over the vocabulary)
    score(q) = sum over query TOKENS (repeats count) of
               idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avg_len))

Tokenization (applied to items and queries alike): lowercase, then runs of word characters
(``re.findall(r"\\w+", text.lower())``); query tokens absent from the corpus add nothing.

A query's score is accumulated token by token in query order, with the same floating-point
operations as rank-bm25, so scores (and therefore rankings, ties included) are bit-identical.
Terms in many items (the template words "title", "brand", ... are in all of them) are kept
as dense rows: adding a dense row is far cheaper than a scattered add of the same size.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence

import numpy as np
from scipy import sparse

_WORD = re.compile(r"\w+")
# A term in at least 1/_DENSE_FRACTION of the items is stored as a dense row.
_DENSE_FRACTION = 16


def tokenize(text: str) -> list[str]:
    """The documented BM25 tokenization: lowercase word-character runs."""
    return _WORD.findall(text.lower())


class BM25Index:
    """BM25 scores of free-text queries against every document of a fixed corpus."""

    def __init__(
        self,
        documents: Sequence[str],
        *,
        k1: float = 1.5,
        b: float = 0.75,
        epsilon: float = 0.25,
        name: str = "corpus",
    ) -> None:
        if len(documents) == 0:
            raise ValueError(f"cannot build a BM25 index: the item corpus of {name!r} is empty")
        self.name = name
        self.k1 = k1
        self.b = b
        self.epsilon = epsilon
        self.vocabulary: dict[str, int] = {}  # Term -> column, in first-appearance order.
        rows: list[int] = []
        cols: list[int] = []
        freqs: list[int] = []
        doc_len = np.zeros(len(documents), dtype=np.int64)
        for doc_index, text in enumerate(documents):
            tokens = tokenize(text)
            doc_len[doc_index] = len(tokens)
            for term, count in Counter(tokens).items():
                term_id = self.vocabulary.setdefault(term, len(self.vocabulary))
                rows.append(term_id)
                cols.append(doc_index)
                freqs.append(count)
        self.doc_len = doc_len  # (N_c,)
        num_docs = len(documents)
        num_terms = len(self.vocabulary)
        term_ids = np.asarray(rows, dtype=np.int64)
        doc_ids = np.asarray(cols, dtype=np.int64)
        tf = np.asarray(freqs, dtype=np.int64)
        doc_freq = np.bincount(term_ids, minlength=num_terms)  # (V,)
        self.idf = self._idf(doc_freq, num_docs)  # (V,)
        self.avg_len = float(doc_len.sum()) / num_docs
        if num_terms == 0:
            weights = np.zeros(0, dtype=np.float64)
        else:
            # Same operation order as rank-bm25 so the scores agree to the last bits.
            norm = self.k1 * (1 - self.b + self.b * doc_len / self.avg_len)  # (N_c,)
            weights = self.idf[term_ids] * (tf * (self.k1 + 1) / (tf + norm[doc_ids]))
        # (V, N_c): row t holds term t's BM25 contribution to every item containing it.
        self._term_item = sparse.csr_matrix(
            (weights, (term_ids, doc_ids)), shape=(num_terms, num_docs), dtype=np.float64
        )
        self._term_item.sort_indices()
        frequent = np.flatnonzero(doc_freq * _DENSE_FRACTION >= num_docs)
        self._dense_rows = {int(t): self._term_item[t].toarray()[0] for t in frequent}

    def _idf(self, doc_freq: np.ndarray, num_docs: int) -> np.ndarray:
        idf = np.array(
            [math.log(num_docs - df + 0.5) - math.log(df + 0.5) for df in doc_freq.tolist()],
            dtype=np.float64,
        )
        if idf.size == 0:
            return idf
        # rank-bm25 sums in vocabulary order with Python floats; keep that order.
        average_idf = sum(idf.tolist()) / idf.size
        idf[idf < 0] = self.epsilon * average_idf
        return idf

    @property
    def num_docs(self) -> int:
        return self._term_item.shape[1]

    def scores(self, queries: Sequence[str]) -> np.ndarray:
        """(N_c, Q) BM25 score of every item for each query; an empty query scores 0."""
        out = np.zeros((len(queries), self.num_docs), dtype=np.float64)  # (Q, N_c)
        indptr, indices, data = (
            self._term_item.indptr, self._term_item.indices, self._term_item.data
        )
        for row, query in zip(out, queries, strict=True):
            for token in tokenize(query):  # repeats count, in query order like rank-bm25
                term = self.vocabulary.get(token)
                if term is None:
                    continue
                dense = self._dense_rows.get(term)
                if dense is not None:
                    row += dense
                else:
                    span = slice(indptr[term], indptr[term + 1])
                    row[indices[span]] += data[span]
        return out.T  # (N_c, Q)

    def score(self, query: str) -> np.ndarray:
        """(N_c,) BM25 scores of one query."""
        return self.scores([query])[:, 0]

    def has_known_terms(self, query: str) -> bool:
        """Whether any token of the query occurs in the corpus (else every score is 0)."""
        return any(t in self.vocabulary for t in tokenize(query))

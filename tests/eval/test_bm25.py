"""BM25 parity with rank-bm25's BM25Okapi on real corpora and awkward queries."""

from __future__ import annotations

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from calrec_core.eval.bm25 import BM25Index, tokenize


def reference_scores(documents, query):
    return BM25Okapi([tokenize(d) for d in documents]).get_scores(tokenize(query))


def test_tokenize_lowercases_and_splits_on_non_word_characters():
    assert tokenize("Title: Post-it Notes, 3x3. Price: $11.22.") == [
        "title", "post", "it", "notes", "3x3", "price", "11", "22"
    ]


def test_small_corpus_matches_reference_including_negative_idf_floor():
    # "pen" is in 3 of 4 documents: its raw idf is negative and gets the epsilon floor.
    documents = ["red pen", "blue pen pen", "pen holder desk", "stapler"]
    index = BM25Index(documents)
    for query in ["pen", "pen pen red", "desk stapler", "unknown words", ""]:
        # Same operations in the same order: bit-identical, not merely close.
        np.testing.assert_array_equal(index.score(query), reference_scores(documents, query))


def test_empty_corpus_is_a_clear_error():
    with pytest.raises(ValueError, match="Gift_Cards"):
        BM25Index([], name="Gift_Cards")


def test_corpus_of_empty_documents_scores_zero():
    index = BM25Index(["", "  ", "..."])
    np.testing.assert_array_equal(index.score("anything"), np.zeros(3))


@pytest.mark.shared_data
def test_real_corpora_match_rank_bm25(real_corpora):
    rng = np.random.default_rng(0)
    for category, corpus in real_corpora.items():
        texts = list(corpus.values())
        reference = BM25Okapi([tokenize(t) for t in texts])
        index = BM25Index(texts, name=category)
        picks = rng.choice(len(texts), size=4, replace=False)
        queries = [texts[i] for i in picks]  # whole item texts
        queries += [" ".join(texts[i].split()[1:5]) for i in picks[:2]]  # partial titles
        queries += ["", "zzqx unheardofword", "paper paper paper Title Title"]
        scores = index.scores(queries)  # (N_c, Q)
        assert scores.shape == (len(texts), len(queries))
        for column, query in enumerate(queries):
            expected = reference.get_scores(tokenize(query))
            np.testing.assert_allclose(scores[:, column], expected, rtol=0, atol=1e-9,
                                       err_msg=f"{category}: {query!r}")
            np.testing.assert_array_equal(np.argsort(-scores[:, column], kind="stable"),
                                          np.argsort(-expected, kind="stable"))

"""Table 1 arithmetic, word statistics, mixture weights and the accounting check."""

from __future__ import annotations

import pytest

from calrec_core.data.mixture import mixture_weights
from calrec_core.data.stats import (
    check_accounting,
    corpus_word_stats,
    format_table,
    table1_row,
)
from calrec_core.item_text import make_attributes


def test_word_stats_count_lowercase_natural_words_of_the_four_attributes():
    items = [make_attributes("Blue Pen, blue ink", "Office", "Acme", "$2.50"),
             make_attributes("Pen", None, None, None)]  # 'Unknown' placeholders are not words
    # words: blue pen blue ink office acme 2 50 | pen
    assert corpus_word_stats(items) == {"items": 2, "word_tokens": 9, "word_vocab_size": 7}


def _counts(**overrides):
    counts = {"users": 4, "items": 5, "purchases": 10, "strict_duplicates": 2, "kept": 10,
              "dead_letter": 1, "read": 16, "filtered": {"too_short": 3, "user_sampled_out": 0},
              "word_tokens": 30, "word_vocab_size": 12}
    counts.update(overrides)
    return counts


def test_table1_row():
    row = table1_row(_counts())
    assert row["density"] == pytest.approx(10 / (4 * 5))
    assert row["items_per_user"] == 2.5 and row["purchases_per_item"] == 2.0
    assert row["duplicate_purchases_pct"] == pytest.approx(100 * 2 / 15)
    assert row["words_per_item"] == 6.0 and row["avg_word_frequency"] == 2.5


def test_accounting_mismatch_is_an_error():
    check_accounting("C", _counts())
    with pytest.raises(RuntimeError, match="accounting mismatch"):
        check_accounting("C", _counts(read=17))


def test_mixture_needs_some_users_and_normalises():
    with pytest.raises(ValueError, match="no category"):
        mixture_weights({"A": 0})
    mixture = mixture_weights({"A": 1000, "B": 1})
    assert mixture["weights"]["A"] == pytest.approx(1000**0.3 / (1000**0.3 + 1))


def test_format_table_lists_every_category():
    category = {**_counts(), "role": "eval", "items_without_metadata": 1,
                "mixture": {"weight": 1.0, "users": 4}}
    category["table1"] = table1_row(category)
    text = format_table({"categories": {"Pets": category}})
    assert "Pets" in text and "Density" in text and "0.5" in text

"""Hierarchical exact matching (§6, Table 8) on hand-built corpora and the real sample."""

from __future__ import annotations

import numpy as np

from calrec_core.eval.hierarchical import HierarchicalMatcher
from calrec_core.item_text import format_item, make_attributes


def item(title, category="Office", brand="Acme", price="$5.00"):
    return format_item(make_attributes(title, category, brand, price))


CORPUS = [
    item("Blue Pen"),                      # 0
    item("Blue Pen", brand="Other"),       # 1 same title, other brand
    item("Blue Pen", price="$9.00"),       # 2 same title/category/brand, other price
    item("Stapler", category="Tools"),     # 3
    item("Stapler"),                       # 4
]


def test_levels_fall_back_from_four_attributes_to_title():
    matcher = HierarchicalMatcher(CORPUS)
    assert matcher.match(item("Blue Pen")) == (4, [0])
    assert matcher.match(item("Blue Pen", price="$1.00")) == (3, [0, 2])
    assert matcher.match(item("Stapler", brand="Nobody")) == (2, [4])
    assert matcher.match(item("Stapler", category="Garden", brand="X")) == (1, [3, 4])
    assert matcher.match(item("Eraser")) == (0, [])
    assert matcher.match("a pen, please") is None


def test_scores_rank_the_best_samples_matches_first():
    matcher = HierarchicalMatcher(CORPUS)
    ranked = [item("Stapler", category="Tools"), item("Blue Pen", price="$1.00"), "garbage"]
    scores = matcher.scores(ranked)
    np.testing.assert_array_equal(scores, [2.0, 0.0, 2.0, 3.0, 0.0])


def test_counts_give_table_8_rates():
    matcher = HierarchicalMatcher(CORPUS)
    counts = matcher.count([item("Blue Pen"), item("Blue Pen", brand="Z"), "no format", item("X")])
    assert (counts.num_outputs, counts.num_format_errors) == (4, 1)
    assert (counts.num_match_all_four, counts.num_match_title) == (1, 2)
    assert counts.rates()["format_error_rate"] == 0.25


def test_every_real_item_matches_itself_at_the_top_level(gift_cards_dir):
    from calrec_core.data import load_corpus

    texts = load_corpus(gift_cards_dir, "Gift_Cards")["text"].tolist()
    matcher = HierarchicalMatcher(texts)
    for row in range(0, len(texts), 97):
        level, items = matcher.match(texts[row])
        assert level == 4 and row in items
        assert all(texts[i] == texts[row] for i in items)

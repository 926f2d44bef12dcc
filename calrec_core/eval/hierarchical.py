"""Hierarchical exact matching of generated item text to the corpus (CALRec §6, Table 8).

A generation is parsed back into (title, category, brand, price). It matches the items
whose attributes equal all four; failing that the first three, then the first two, then
the title alone. Ranking: the kept samples (Algorithm 1 lines 1-4, best first) hand out
descending scores n, n-1, ..., 1 to their matched items and an item keeps its best score,
so the top sample's matches come first and unmatched items tie at 0.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Sequence

import numpy as np

from calrec_core.item_text import parse_item_text

# Attribute prefixes tried in order: all four, then three, two, the title alone.
_LEVELS = (4, 3, 2, 1)


@dataclasses.dataclass
class MatchCounts:
    """Table 8's counts over generated outputs."""

    num_outputs: int = 0  # Generations inspected.
    num_format_errors: int = 0  # Not of the form "Title: . Category: . Brand: . Price: .".
    num_match_all_four: int = 0  # Some corpus item equals all four attributes.
    num_match_title: int = 0  # Some corpus item has exactly this title.

    def add(self, other: MatchCounts) -> None:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))

    def rates(self) -> dict[str, float]:
        total = max(self.num_outputs, 1)
        return {
            "format_error_rate": self.num_format_errors / total,
            "match_all_four_rate": self.num_match_all_four / total,
            "match_title_rate": self.num_match_title / total,
        }


class HierarchicalMatcher:
    """Exact attribute lookup tables over the corpus item texts."""

    def __init__(self, item_texts: Sequence[str]) -> None:
        self.num_items = len(item_texts)
        self._tables: dict[int, dict[tuple[str, ...], list[int]]] = {
            level: defaultdict(list) for level in _LEVELS
        }
        for index, text in enumerate(item_texts):
            attributes = parse_item_text(text)
            if attributes is None:
                continue
            values = attributes.as_tuple()
            for level in _LEVELS:
                self._tables[level][values[:level]].append(index)

    def match(self, text: str) -> tuple[int, list[int]] | None:
        """(level, matched item indices) for a generation; None on a format error.

        Level 0 with no items means well formed but nothing matched even by title.
        """
        attributes = parse_item_text(text)
        if attributes is None:
            return None
        values = attributes.as_tuple()
        for level in _LEVELS:
            items = self._tables[level].get(values[:level])
            if items:
                return level, items
        return 0, []

    def count(self, texts: Sequence[str]) -> MatchCounts:
        counts = MatchCounts()
        for text in texts:
            counts.num_outputs += 1
            attributes = parse_item_text(text)
            if attributes is None:
                counts.num_format_errors += 1
                continue
            values = attributes.as_tuple()
            counts.num_match_all_four += values in self._tables[4]
            counts.num_match_title += values[:1] in self._tables[1]
        return counts

    def scores(self, ranked_texts: Sequence[str]) -> np.ndarray:
        """(N_c,) scores from samples already sorted best first and de-duplicated."""
        scores = np.zeros(self.num_items, dtype=np.float64)
        for position, text in enumerate(ranked_texts):
            found = self.match(text)
            if not found:
                continue
            value = float(len(ranked_texts) - position)
            items = np.asarray(found[1], dtype=np.int64)
            scores[items] = np.maximum(scores[items], value)
        return scores

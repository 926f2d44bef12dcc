"""The full item catalog of one category, indexed for BM25 and exact matching."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import numpy as np

from calrec_core.eval.bm25 import BM25Index
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.hierarchical import HierarchicalMatcher


@dataclasses.dataclass(frozen=True)
class Catalog:
    """Every item of a category (never a sample of it), in corpus order."""

    category: str  # Category name, used in messages and outputs.
    asins: list[str]  # Item ids, corpus order.
    texts: list[str]  # Item texts, "Title: .. Category: .. Brand: .. Price: ..".
    index: BM25Index  # BM25 over `texts`.
    matcher: HierarchicalMatcher  # Exact attribute lookup over `texts`.
    position: dict[str, int]  # asin -> row; the first row wins for a repeated asin.

    @property
    def size(self) -> int:
        return len(self.asins)

    @functools.cached_property
    def _rows_by_key(self) -> dict[str, list[int]]:
        """asin or exact item text -> every row holding it (an asin may repeat)."""
        rows: dict[str, list[int]] = {}
        for row, (asin, text) in enumerate(zip(self.asins, self.texts, strict=True)):
            rows.setdefault(asin, []).append(row)
            if text != asin:
                rows.setdefault(text, []).append(row)
        return rows

    def history_mask(self, history: Sequence[str]) -> np.ndarray:
        """(N_c,) bool, True on the rows of the history's items, named by asin or by exact
        item text; entries that name no catalog item are ignored."""
        mask = np.zeros(self.size, dtype=bool)
        for key in history:
            mask[self._rows_by_key.get(key, [])] = True
        return mask

    @functools.cached_property
    def num_markup_residue(self) -> int:
        """Item texts still holding markup (0 on a corpus ingested with strip_markup)."""
        from calrec_core.item_text import has_markup_residue

        return sum(1 for text in self.texts if has_markup_residue(text))


def build_catalog(asins, texts, category: str, config: EvalConfig | None = None) -> Catalog:
    config = config or EvalConfig()
    asins = [str(a) for a in asins]
    texts = [str(t) for t in texts]
    if len(asins) != len(texts):
        raise ValueError(f"{category}: {len(asins)} asins but {len(texts)} item texts")
    if not asins:
        raise ValueError(f"the item corpus of category {category!r} is empty")
    position: dict[str, int] = {}
    for row, asin in enumerate(asins):
        position.setdefault(asin, row)
    index = BM25Index(
        texts, k1=config.bm25_k1, b=config.bm25_b, epsilon=config.bm25_epsilon, name=category
    )
    return Catalog(category, asins, texts, index, HierarchicalMatcher(texts), position)


def load_catalog(data_dir, category: str, config: EvalConfig | None = None) -> Catalog:
    """Reads ``<data_dir>/<category>/corpus.parquet`` written by ingestion."""
    from calrec_core.data import load_corpus

    corpus = load_corpus(data_dir, category)
    missing = {"asin", "text"} - set(corpus.columns)
    if missing:
        raise ValueError(f"corpus of {category!r} lacks columns {sorted(missing)}")
    return build_catalog(corpus["asin"].tolist(), corpus["text"].tolist(), category, config)

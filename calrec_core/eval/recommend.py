"""Top-K catalog items for one purchase history, for a person to try the model."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from calrec_core.eval.catalog import Catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.scoring import (
    MODEL_METHODS,
    check_methods,
    generation_scores,
    lir_scores,
    top_items,
)


def parse_history(value: str) -> list[str]:
    """A JSON list of strings, given inline or as a path to a JSON file."""
    try:
        is_file = pathlib.Path(value).is_file()
    except OSError:  # an inline JSON string too long to be a file name
        is_file = False
    text = pathlib.Path(value).read_text(encoding="utf-8") if is_file else value
    try:
        history = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--history must be a JSON list of item texts or asins: {error}") from None
    if not isinstance(history, list) or not history or not all(isinstance(h, str) for h in history):
        raise ValueError("--history must be a non-empty JSON list of strings")
    return history


def resolve_history(catalog: Catalog, history: Sequence[str]) -> list[str]:
    """Item texts for a history given as asins of the catalog and/or free item texts."""
    return [catalog.texts[catalog.position[h]] if h in catalog.position else h for h in history]


def recommend(
    catalog: Catalog,
    history: Sequence[str],
    *,
    method: str = "calrec",
    sampler=None,
    config: EvalConfig | None = None,
    k: int = 10,
) -> list[dict]:
    """[{rank, asin, text, score}] of the k best items of the full catalog."""
    config = config or EvalConfig()
    (method,) = check_methods([method])
    texts = resolve_history(catalog, history)
    if method in MODEL_METHODS:
        if sampler is None:
            raise ValueError(f"method {method!r} needs a model")
        generations = sampler.sample([texts], MODEL_METHODS[method], config.seed)[0]
        scores, _ = generation_scores(method, catalog, generations, config)
    else:
        scores = lir_scores(catalog, texts)
    return [
        {"rank": rank + 1, "asin": catalog.asins[i], "text": catalog.texts[i],
         "score": float(scores[i])}
        for rank, i in enumerate(top_items(scores, k))
    ]

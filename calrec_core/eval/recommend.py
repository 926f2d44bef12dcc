"""Top-K catalog items for one purchase history, for a person to try the model."""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Sequence

from calrec_core.errors import CalrecError
from calrec_core.eval.catalog import Catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.scoring import (
    MODEL_METHODS,
    MODEL_RANKINGS,
    UNSAMPLED,
    check_methods,
    generation_scores,
    lir_scores,
    model_ranking_scores,
    recommended_items,
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
    """Item texts for a history given as asins of the catalog and/or free item texts.

    An entry without whitespace is taken for an asin (an item text has words); one the
    catalog does not hold is refused rather than matched as if it were text.
    """
    texts = []
    for entry in history:
        if entry in catalog.position:
            texts.append(catalog.texts[catalog.position[entry]])
        elif len(entry.split()) <= 1:
            raise CalrecError(f"--history: {entry!r} is not an asin of the {catalog.category} "
                              "catalog (give catalog asins or full item texts)")
        else:
            texts.append(entry)
    return texts


def recommend_with_details(
    catalog: Catalog,
    history: Sequence[str],
    *,
    method: str = "calrec",
    generator=None,
    config: EvalConfig | None = None,
    k: int = 10,
) -> dict:
    """The k best items of the full catalog and what they came from.

    Returns {"items": [{rank, asin, text, score, in_history}], "generations": the sampled
    texts (all N_gen, best first; [] for lir), "num_empty_generations", "all_scores_tied"
    (every catalog item scored the same: the order is catalog order, not a recommendation)}.
    """
    config = config or EvalConfig()
    (method,) = check_methods([method])
    texts = resolve_history(catalog, history)
    generations = []
    if method in MODEL_METHODS:
        if generator is None:
            raise ValueError(f"method {method!r} needs a model")
        generations = ([] if method in UNSAMPLED else
                       generator.sample([texts], MODEL_METHODS[method], config.seed)[0])
        if method in MODEL_RANKINGS:  # the texts shown: the items decoded, or the samples
            scores, _, generations = model_ranking_scores(method, generator, catalog, texts,
                                                          generations, config)
        else:
            scores, _ = generation_scores(method, catalog, generations, config)
    else:
        scores = lir_scores(catalog, texts)
    in_history = catalog.history_mask([*history, *texts])
    items = [
        {"rank": rank + 1, "asin": catalog.asins[i], "text": catalog.texts[i],
         "score": float(scores[i]), "in_history": bool(in_history[i])}
        for rank, i in enumerate(recommended_items(
            scores, catalog.history_mask(history), k, config.exclude_history))
    ]
    # Best first; a sample with a non-finite log-probability last.
    ranked = sorted(generations, key=lambda g: (not math.isfinite(g.logprob),
                                                -g.logprob if math.isfinite(g.logprob) else 0))
    return {
        "items": items,
        "generations": [g.text for g in ranked],
        "num_empty_generations": sum(1 for g in generations if not g.text.strip()),
        "all_scores_tied": bool(scores.max() == scores.min()),
    }


def recommend(catalog: Catalog, history: Sequence[str], **options) -> list[dict]:
    """[{rank, asin, text, score, in_history}] of the k best items of the full catalog
    (options as for ``recommend_with_details``)."""
    return recommend_with_details(catalog, history, **options)["items"]

"""Scores every catalog item for a batch of users with each evaluation method.

Methods (CALRec §4-§6):
  lir          Last Item Repeater: raw BM25 with the last history item's text as query.
  calrec       CALRec template, N_gen samples, quasi-round-robin BM25 fusion (Algorithm 1).
  calrec_hier  The same samples, hierarchical exact matching instead of BM25 (§6).
  gpt4rec      GPT4Rec's template on history titles, fused with BM25 like calrec.
Which model generates (pretrained or a trained checkpoint) is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calrec_core.eval.catalog import Catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.fusion import fuse_scores, select_samples
from calrec_core.eval.generation import Generation
from calrec_core.eval.metrics import target_ranks, user_metrics

# Prompt template each generative method samples from; methods sharing one share samples.
MODEL_METHODS = {"calrec": "calrec", "calrec_hier": "calrec", "gpt4rec": "gpt4rec"}
METHODS = ("lir", *MODEL_METHODS)


def check_methods(methods: Sequence[str]) -> list[str]:
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"unknown or no methods {unknown or methods}; choose from {METHODS}")
    return methods


def split_example(example: dict) -> tuple[list[str], str]:
    """(history texts, target asin) of a valid/test example (target = last element)."""
    if not example["asins"]:
        raise ValueError(f"user {example.get('user_id')!r} has an empty sequence")
    return list(example["texts"][:-1]), example["asins"][-1]


def top_items(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k best scores, ties in corpus order."""
    k = min(k, scores.shape[0])
    candidates = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(k)
    threshold = scores[candidates].min()
    pool = np.flatnonzero(scores >= threshold)  # every item that could make the cut
    return pool[np.argsort(-scores[pool], kind="stable")][:k]


def _row(method, example, catalog, scores, config, history_len, extra) -> dict:
    _, target_asin = split_example(example)
    target_index = catalog.position.get(target_asin)
    ranks = target_ranks(scores, target_index)
    best = top_items(scores, config.top_k)
    row = {
        "method": method,
        "user_id": example["user_id"],
        "target_asin": target_asin,
        "target_in_corpus": target_index is not None,
        "history_len": history_len,
        "rank_opt": -1 if ranks.opt is None else ranks.opt,
        "rank_pes": -1 if ranks.pes is None else ranks.pes,
        "all_scores_tied": bool(scores.max() == scores.min()),
        "top_asins": [catalog.asins[i] for i in best],
        "top_texts": [catalog.texts[i] for i in best],
        "top_scores": [float(scores[i]) for i in best],
        "num_samples": 0,
        "num_empty_samples": 0,
        "num_unique_samples": 0,
        "num_format_errors": 0,
        "num_match_all_four": 0,
        "num_match_title": 0,
        "generations": [],
    }
    row.update(user_metrics(ranks))
    row.update(extra)
    return row


def lir_scores(catalog: Catalog, history_texts: Sequence[str]) -> np.ndarray:
    """(N_c,) BM25 scores with the last history item as the query (zeros without history)."""
    if not history_texts:
        return np.zeros(catalog.size, dtype=np.float64)
    return catalog.index.score(history_texts[-1])


def generation_scores(
    method: str, catalog: Catalog, generations: Sequence[Generation], config: EvalConfig
) -> tuple[np.ndarray, dict]:
    """(N_c,) scores of one user's samples plus the counts reported in the metrics."""
    texts = [g.text for g in generations]
    selected = select_samples(texts, [g.logprob for g in generations], config.n_preds)
    if method == "calrec_hier":
        scores = catalog.matcher.scores(selected.texts)
    else:
        scores = fuse_scores(catalog.index.scores(selected.texts), selected.logprobs,
                             config.epsilon)
    counts = catalog.matcher.count(texts) if method != "gpt4rec" else None
    extra = {
        "num_samples": len(texts),
        "num_empty_samples": sum(1 for t in texts if not t.strip()),
        "num_unique_samples": len(selected.texts),
        "generations": selected.texts,
    }
    if counts is not None:
        extra.update(
            num_format_errors=counts.num_format_errors,
            num_match_all_four=counts.num_match_all_four,
            num_match_title=counts.num_match_title,
        )
    return scores, extra


def score_batch(
    examples: Sequence[dict],
    catalog: Catalog,
    methods: Sequence[str],
    config: EvalConfig,
    *,
    sampler=None,
) -> dict[str, list[dict]]:
    """Per-method result rows for a batch of users."""
    histories = [split_example(e)[0] for e in examples]
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    samples_by_template: dict[str, list[list[Generation]]] = {}
    for template in sorted({MODEL_METHODS[m] for m in methods if m in MODEL_METHODS}):
        if sampler is None:
            raise ValueError(f"methods {list(methods)} need a model to sample from")
        with_history = [i for i, h in enumerate(histories) if h]
        # The sampler keys each sample by seed and prompt, so batching never changes them.
        drawn = sampler.sample([histories[i] for i in with_history], template,
                               config.seed) if with_history else []
        per_user: list[list[Generation]] = [[] for _ in histories]
        for i, generations in zip(with_history, drawn, strict=True):
            per_user[i] = generations
        samples_by_template[template] = per_user
    for method in methods:
        for i, example in enumerate(examples):
            if method == "lir":
                scores, extra = lir_scores(catalog, histories[i]), {}
            else:
                generations = samples_by_template[MODEL_METHODS[method]][i]
                scores, extra = generation_scores(method, catalog, generations, config)
            rows[method].append(
                _row(method, example, catalog, scores, config, len(histories[i]), extra)
            )
    return rows

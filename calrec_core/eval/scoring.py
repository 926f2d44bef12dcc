"""Scores every catalog item for a batch of users with each evaluation method.

Methods (CALRec §4-§6):
  lir          Last Item Repeater: raw BM25 with the last history item's text as query.
  calrec       CALRec template, N_gen samples, quasi-round-robin BM25 fusion (Algorithm 1).
  calrec_hier  The same samples, hierarchical exact matching instead of BM25 (§6).
  gpt4rec      GPT4Rec's template on history titles, fused with BM25 like calrec.
  calrec_constrained  Decoding constrained to the catalog's item texts (eval/constrained.py).
  calrec_rerank       The model's likelihood of a LIR + fusion candidate pool (eval/rerank.py).
Which model generates (pretrained or a trained checkpoint) is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calrec_core.eval.catalog import Catalog
from calrec_core.eval.config import MODEL_RANKINGS, EvalConfig
from calrec_core.eval.fusion import quasi_round_robin, select_samples
from calrec_core.eval.generation import Generation
from calrec_core.eval.metrics import HISTORY_IN_TOP, NO_HISTORY, target_ranks, user_metrics

# Prompt template each generative method samples from; methods sharing one share samples.
MODEL_METHODS = {"calrec": "calrec", "calrec_hier": "calrec", "gpt4rec": "gpt4rec",
                 "calrec_constrained": "calrec", "calrec_rerank": "calrec"}
METHODS = ("lir", *MODEL_METHODS)
UNSAMPLED = ("calrec_constrained",)  # Model methods that decode on their own (no N_gen samples).


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


def without_history(scores: np.ndarray, history_mask: np.ndarray) -> np.ndarray:
    """(N_c,) scores with the history's items below every other item (-inf): the ranking
    of the catalog less the user's own items, whose ranks and ties are otherwise unchanged."""
    return np.where(history_mask, -np.inf, scores)


def recommended_items(
    scores: np.ndarray, history_mask: np.ndarray, k: int, exclude_history: bool
) -> np.ndarray:
    """The k best rows of the full ranking, or (exclude_history) of the catalog less the
    history's items."""
    if not exclude_history:
        return top_items(scores, k)
    best = top_items(without_history(scores, history_mask), k)
    return best[~history_mask[best]]  # drops any only when fewer than k other items exist


def _row(method, example, catalog, scores, config, history_len, extra) -> dict:
    _, target_asin = split_example(example)
    target_index = catalog.position.get(target_asin)
    ranks = target_ranks(scores, target_index)
    history_mask = catalog.history_mask(example["asins"][:-1])
    nohist_ranks = target_ranks(without_history(scores, history_mask), target_index)
    best = recommended_items(scores, history_mask, config.top_k, config.exclude_history)
    top10 = top_items(scores, 10)
    row = {
        "method": method,
        "user_id": example["user_id"],
        "target_asin": target_asin,
        "target_in_corpus": target_index is not None,
        "history_len": history_len,
        "rank_opt": -1 if ranks.opt is None else ranks.opt,
        "rank_pes": -1 if ranks.pes is None else ranks.pes,
        f"{NO_HISTORY}rank_opt": -1 if nohist_ranks.opt is None else nohist_ranks.opt,
        f"{NO_HISTORY}rank_pes": -1 if nohist_ranks.pes is None else nohist_ranks.pes,
        HISTORY_IN_TOP: float(history_mask[top10].any()),
        "all_scores_tied": bool(scores.max() == scores.min()),
        "top_asins": [catalog.asins[i] for i in best],
        "top_texts": [catalog.texts[i] for i in best],
        "top_scores": [float(scores[i]) for i in best],
        "num_samples": 0,
        "num_empty_samples": 0,
        "num_unique_samples": 0,
        "num_nonfinite_logprobs": 0,
        "num_format_errors": 0,
        "num_match_all_four": 0,
        "num_match_title": 0,
        "generations": [],
    }
    row.update(user_metrics(ranks))
    row.update(user_metrics(nohist_ranks, NO_HISTORY))
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
    """(N_c,) scores of one user's samples plus the counts reported in the metrics.

    A sample whose log-probability is not finite (NaN, inf) cannot be ranked or modulated:
    it is left out of the fusion and counted (``num_nonfinite_logprobs``)."""
    texts = [g.text for g in generations]
    finite = [g for g in generations if np.isfinite(g.logprob)]
    selected = select_samples([g.text for g in finite], [g.logprob for g in finite],
                              config.n_preds)
    if method == "calrec_hier":
        scores = catalog.matcher.scores(selected.texts)
    else:  # Algorithm 1, end to end
        scores = quasi_round_robin(catalog.index, [g.text for g in finite],
                                   [g.logprob for g in finite], n_preds=config.n_preds,
                                   epsilon=config.epsilon)
    counts = catalog.matcher.count(texts) if method != "gpt4rec" else None
    extra = {
        "num_samples": len(texts),
        "num_empty_samples": sum(1 for t in texts if not t.strip()),
        "num_unique_samples": len(selected.texts),
        "num_nonfinite_logprobs": len(generations) - len(finite),
        "generations": selected.texts,
    }
    if counts is not None:
        extra.update(
            num_format_errors=counts.num_format_errors,
            num_match_all_four=counts.num_match_all_four,
            num_match_title=counts.num_match_title,
        )
    return scores, extra


def model_ranking_scores(method: str, generator, catalog: Catalog, history_texts: Sequence[str],
                         samples: Sequence[Generation], config: EvalConfig):
    """(N_c,) scores, row extras and the generations shown to a person, of the rankings
    beyond the sampler (MODEL_RANKINGS); ``samples`` are the user's N_gen samples."""
    if method == "calrec_rerank":
        from calrec_core.eval.rerank import rerank_scores

        scores, extra = rerank_scores(generator, catalog, history_texts, samples, config)
        return scores, extra, list(samples)
    from calrec_core.eval.constrained import constrained_generations, constrained_scores
    from calrec_core.eval.trie import catalog_trie

    items, generations = constrained_generations(generator, catalog, history_texts, config)
    rest = lir_scores(catalog, history_texts) if config.rank_rest_by == "lir" else None
    scores = constrained_scores(catalog, catalog_trie(catalog, generator.tokenizer), items,
                                generations, rest, config)
    extra = {"num_samples": len(generations), "num_unique_samples": len(generations),
             "generations": [g.text for g in generations]}
    return scores, extra, generations


def score_batch(
    examples: Sequence[dict],
    catalog: Catalog,
    methods: Sequence[str],
    config: EvalConfig,
    *,
    generator=None,
) -> dict[str, list[dict]]:
    """Per-method result rows for a batch of users."""
    histories = [split_example(e)[0] for e in examples]
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    samples_by_template: dict[str, list[list[Generation]]] = {}
    sampled = [m for m in methods if m in MODEL_METHODS and m not in UNSAMPLED]
    if generator is None and any(m in MODEL_METHODS for m in methods):
        raise ValueError(f"methods {list(methods)} need a model to sample from")
    for template in sorted({MODEL_METHODS[m] for m in sampled}):
        with_history = [i for i, h in enumerate(histories) if h]
        # The generator keys each sample by seed and prompt, so batching never changes them.
        drawn = generator.sample([histories[i] for i in with_history], template,
                               config.seed) if with_history else []
        per_user: list[list[Generation]] = [[] for _ in histories]
        for i, generations in zip(with_history, drawn, strict=True):
            per_user[i] = generations
        samples_by_template[template] = per_user
    for method in methods:
        for i, example in enumerate(examples):
            if method == "lir":
                scores, extra = lir_scores(catalog, histories[i]), {}
            elif method in MODEL_RANKINGS:
                scores, extra = model_ranking_scores(
                    method, generator, catalog, histories[i],
                    samples_by_template.get(MODEL_METHODS[method], [[]] * len(examples))[i],
                    config)[:2]
            else:
                generations = samples_by_template[MODEL_METHODS[method]][i]
                scores, extra = generation_scores(method, catalog, generations, config)
            rows[method].append(
                _row(method, example, catalog, scores, config, len(histories[i]), extra)
            )
    return rows


# Training settings that are quality levers, copied from a trained model's train_config.
TRAIN_LEVERS = ("lr_schedule", "warmup_steps", "lr_decay_steps", "lr_final_ratio",
                "learning_rate", "stage2_steps", "alpha", "beta")


def quality_levers(config: EvalConfig, catalog: Catalog, model_source: str | None) -> dict:
    """The quality levers in effect for one evaluation, for reports to set side by side:
    history exclusion (both rankings are always scored; the "nohist_" metrics exclude),
    markup residue left in the catalog's texts, and a trained model's schedule settings."""
    levers: dict = {
        "exclude_history": config.exclude_history,
        "history_metrics_prefix": NO_HISTORY,
        "corpus_markup_residue": catalog.num_markup_residue,
    }
    if model_source not in (None, "pretrained"):
        from calrec_core.model.export import read_model_info

        try:
            train_config = read_model_info(model_source).get("train_config") or {}
        except FileNotFoundError:
            train_config = {}
        levers.update({k: train_config[k] for k in TRAIN_LEVERS if k in train_config})
    return levers

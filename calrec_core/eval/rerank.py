"""Likelihood reranking: the model scores a candidate pool by the probability of each text.

Per user, the pool is the union of LIR's top M and the fusion's top M (Algorithm 1 over the
paper's N_gen samples; M = ``EvalConfig.rerank_pool``, ties at the cut never split at random,
see ``tiers.pool_rows``). Each candidate's score is the model's log-probability of its
training target (" " + text, then EOS) after the user's prompt, summed over its tokens or
divided by their number (``rerank_length_norm``). The prompt's KV cache is computed once and
the candidates are scored ``rerank_batch_size`` at a time against it. The pool is ranked by
that score (equal scores tie), every other item after it by the fusion (or LIR) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from calrec_core.eval.catalog import Catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.generation import Generation, build_prompt
from calrec_core.eval.likelihood import continuation_logprobs, item_token_ids
from calrec_core.eval.tiers import pool_rows, tiered_scores


def text_scores(model, tokenizer, prompt: Sequence[int], texts: Sequence[str],
                config: EvalConfig) -> np.ndarray:
    """(len(texts),) float64 log-probability of each item text after ``prompt``, summed over
    its tokens or (``rerank_length_norm``) their mean; each distinct text is scored once."""
    distinct = list(dict.fromkeys(texts))
    per_token = continuation_logprobs(
        model, prompt, item_token_ids(tokenizer, distinct),
        batch_size=config.rerank_batch_size, length_bucket=config.length_bucket,
        pad_id=getattr(tokenizer, "pad_id", 0))
    reduce = np.mean if config.rerank_length_norm else np.sum
    score = {text: float(reduce(values.astype(np.float64)))
             for text, values in zip(distinct, per_token, strict=True)}
    return np.asarray([score[text] for text in texts], np.float64)


def rerank_scores(generator, catalog: Catalog, history_texts: Sequence[str],
                  generations: Sequence[Generation], config: EvalConfig):
    """(N_c,) scores of one user and the row counts (``scoring._row``'s extras): the pool by
    the model's likelihood above the rest of the catalog."""
    from calrec_core.eval.scoring import generation_scores, lir_scores

    lir = lir_scores(catalog, history_texts)
    fusion, extra = generation_scores("calrec", catalog, generations, config)
    rest = lir if config.rank_rest_by == "lir" else fusion
    if not history_texts:
        return tiered_scores(np.zeros(0, np.int64), np.zeros(0), rest), extra
    pool = np.union1d(pool_rows(lir, config.rerank_pool), pool_rows(fusion, config.rerank_pool))
    prompt = build_prompt(generator.tokenizer, history_texts, "calrec", config.prompt_budget)
    values = text_scores(generator.model, generator.tokenizer, prompt,
                         [catalog.texts[row] for row in pool], config)
    return tiered_scores(pool, values, rest), extra

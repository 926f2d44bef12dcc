"""Ranking without the user's own history items: a second metric set for every method, and
the exclude_history switch for the returned items; LIR checked against rank-bm25."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from rank_bm25 import BM25Okapi

from calrec_core.data import load_corpus, read_examples
from calrec_core.eval import EvalConfig, run_evaluation, tokenize
from calrec_core.eval.catalog import load_catalog
from calrec_core.eval.recommend import recommend
from calrec_core.user_sample import sample_users

USERS = 40


def reference_rank(scores, target, history, target_first):
    """1-based rank by sorting: history items after all others, ties broken for/against."""
    def key(i):
        if i in history:
            return (1, 0.0, (i == target) != target_first)
        return (0, -scores[i], (i == target) != target_first)

    return sorted(range(len(scores)), key=key).index(target) + 1


def ndcg(rank):
    return 1 / np.log2(1 + rank) if rank <= 10 else 0.0


def test_lir_without_history_matches_independent_reference(gift_cards_dir, tmp_path):
    config = dataclasses.replace(EvalConfig.tiny(), max_users=USERS, shard_size=16)
    result = run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / "run", methods=["lir"],
                            config=config, show_progress=False)
    corpus = load_corpus(gift_cards_dir, "Gift_Cards")
    reference = BM25Okapi([tokenize(t) for t in corpus["text"]])
    asins = list(corpus["asin"])
    examples = sample_users(read_examples(gift_cards_dir, "Gift_Cards", "test"), USERS,
                            config.seed, "Gift_Cards")
    expected = {"ndcg_opt": [], "ndcg_pes": [], "mrr_pes": [], "in_top": []}
    for example in examples:
        scores = list(reference.get_scores(tokenize(example["texts"][-2])))
        history = {i for i, a in enumerate(asins) if a in set(example["asins"][:-1])}
        target = asins.index(example["asins"][-1])
        expected["ndcg_opt"].append(ndcg(reference_rank(scores, target, history, True)))
        expected["ndcg_pes"].append(ndcg(reference_rank(scores, target, history, False)))
        expected["mrr_pes"].append(1 / reference_rank(scores, target, history, False))
        top10 = sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:10]
        expected["in_top"].append(float(any(i in history for i in top10)))
    metrics = result["methods"]["lir"]
    assert metrics["nohist_ndcg@10_opt"] == pytest.approx(np.mean(expected["ndcg_opt"]), abs=1e-12)
    assert metrics["nohist_ndcg@10_pes"] == pytest.approx(np.mean(expected["ndcg_pes"]), abs=1e-12)
    assert metrics["nohist_mrr_pes"] == pytest.approx(np.mean(expected["mrr_pes"]), abs=1e-12)
    assert metrics["history_in_top10"] == pytest.approx(np.mean(expected["in_top"]), abs=1e-12)
    # LIR's query is the last item itself: it sits in nearly every user's full top 10.
    assert metrics["history_in_top10"] > 0.9
    # The full-catalog metrics (the paper's) are still there, unchanged by the switch.
    assert result["levers"]["exclude_history"] is False
    assert metrics["ndcg@10_pes"] != metrics["nohist_ndcg@10_pes"]


def test_every_method_reports_both_rankings(gift_cards_dir, tmp_path):
    from flax import nnx

    from calrec_core.model import Gemma3, Gemma3Config, make_tiny_tokenizer

    loaded = Gemma3(Gemma3Config.tiny(), rngs=nnx.Rngs(0)), make_tiny_tokenizer()
    methods = ["calrec", "calrec_hier", "gpt4rec", "lir"]
    runs = {}
    for exclude in (False, True):
        config = dataclasses.replace(EvalConfig.tiny(), max_users=4, exclude_history=exclude)
        runs[exclude] = run_evaluation(
            gift_cards_dir, "Gift_Cards", tmp_path / str(exclude), methods=methods,
            config=config, model_and_tokenizer=loaded, show_progress=False)
    for method in methods:
        kept, excluded = runs[False]["methods"][method], runs[True]["methods"][method]
        assert any(key.startswith("nohist_") for key in kept)
        # The switch changes what is returned, never what is measured.
        assert kept == excluded
    examples = {e["user_id"]: e for e in read_examples(gift_cards_dir, "Gift_Cards", "test")}
    for exclude in (False, True):
        rows = pd.read_parquet(tmp_path / str(exclude) / "predictions.parquet")
        for row in rows.itertuples():
            history = set(examples[row.user_id]["asins"][:-1])
            if exclude:
                assert not history & set(row.top_asins)
            target_in_history = row.target_asin in history
            if row.target_in_corpus and not target_in_history:
                # Leaving items out can only move the target up.
                assert 1 <= row.nohist_rank_opt <= row.rank_opt
                assert 1 <= row.nohist_rank_pes <= row.rank_pes
    lir_rows = pd.read_parquet(tmp_path / "False" / "predictions.parquet")
    lir_rows = lir_rows[lir_rows["method"] == "lir"]
    # Without the switch LIR returns the last history item itself for some user.
    assert any(set(examples[r.user_id]["asins"][:-1]) & set(r.top_asins)
               for r in lir_rows.itertuples())


def test_recommend_leaves_out_history_given_by_asin_or_text(gift_cards_dir):
    catalog = load_catalog(gift_cards_dir, "Gift_Cards")
    history = [catalog.asins[3], catalog.texts[7]]
    kept = recommend(catalog, history, method="lir", k=10)
    assert kept[0]["asin"] == catalog.asins[7]  # LIR: the last item first
    config = dataclasses.replace(EvalConfig.tiny(), exclude_history=True)
    excluded = recommend(catalog, history, method="lir", k=10, config=config)
    assert len(excluded) == 10
    assert not {catalog.asins[3], catalog.asins[7]} & {item["asin"] for item in excluded}
    # The other items keep their order.
    assert [i["asin"] for i in excluded[:5]] == [
        i["asin"] for i in kept if i["asin"] not in (catalog.asins[3], catalog.asins[7])][:5]

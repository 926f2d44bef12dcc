"""LIR (Table 7) on the real Gift_Cards sample against rank-bm25 and sort-based ranks."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from rank_bm25 import BM25Okapi

from calrec_core.data import load_corpus, read_examples
from calrec_core.eval import EvalConfig, run_evaluation, tokenize
from calrec_core.user_sample import sample_users


def sorted_rank(scores, target, target_first):
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], (i == target) != target_first))
    return order.index(target) + 1


def test_lir_on_real_sample_matches_independent_reference(gift_cards_dir, tmp_path):
    config = dataclasses.replace(EvalConfig.tiny(), max_users=40, shard_size=16)
    result = run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / "run", methods=["lir"],
                            config=config, show_progress=False)
    corpus = load_corpus(gift_cards_dir, "Gift_Cards")
    reference = BM25Okapi([tokenize(t) for t in corpus["text"]])
    position = {a: i for i, a in enumerate(corpus["asin"])}
    # The evaluation's seeded uniform sample of 40 users (calrec_core.user_sample).
    examples = sample_users(read_examples(gift_cards_dir, "Gift_Cards", "test"), 40,
                            config.seed, "Gift_Cards")
    ndcg_opt, recall1_pes = [], []
    for example in examples:
        scores = list(reference.get_scores(tokenize(example["texts"][-2])))
        target = position[example["asins"][-1]]
        rank_opt = sorted_rank(scores, target, True)
        ndcg_opt.append(1 / np.log2(1 + rank_opt) if rank_opt <= 10 else 0.0)
        recall1_pes.append(float(sorted_rank(scores, target, False) == 1))
    metrics = result["methods"]["lir"]
    assert metrics["num_users"] == 40
    assert metrics["num_target_missing"] == 0
    assert metrics["ndcg@10_opt"] == pytest.approx(np.mean(ndcg_opt), abs=1e-12)
    assert metrics["recall@1_pes"] == pytest.approx(np.mean(recall1_pes), abs=1e-12)
    assert metrics["ndcg@10_pes"] <= metrics["ndcg@10_opt"]
    written = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert written["methods"]["lir"] == metrics
    assert written["corpus_size"] == len(corpus)
    assert (tmp_path / "run" / "report.md").read_text().count("lir") >= 1
    assert (tmp_path / "run" / "metrics.png").stat().st_size > 0

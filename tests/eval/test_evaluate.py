"""run_evaluation bookkeeping: resumable shards, bad input counted or refused, reports."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calrec_core.eval import EvalConfig, build_catalog, run_evaluation, write_report
from calrec_core.eval.generation import Generation
from calrec_core.eval.scoring import generation_scores
from calrec_core.item_text import format_item, make_attributes

TEXTS = {f"A{i}": format_item(make_attributes(f"item {name}", "Office", "Acme", "$1.00"))
         for i, name in enumerate(["pen", "pencil", "stapler", "paper", "desk"])}


def example(user, asins):
    return {"user_id": user, "category": "Office", "asins": asins,
            "texts": [TEXTS.get(a, format_item(make_attributes("gone"))) for a in asins],
            "timestamps": list(range(len(asins)))}


@pytest.fixture()
def tiny_dir(tmp_path, dataset_writer):
    test = [example("u1", ["A0", "A1"]), example("u2", ["A2", "A3"]),
            example("u3", ["A4", "MISSING"]), example("u4", ["A1"])]
    return dataset_writer(tmp_path / "data", "Office", TEXTS, {"test": test})


def test_bad_input_is_counted_not_dropped(tiny_dir, tmp_path):
    result = run_evaluation(tiny_dir, "Office", tmp_path / "out", methods=["lir"],
                            config=EvalConfig.tiny(), show_progress=False)
    lir = result["methods"]["lir"]
    assert lir["num_users"] == 4
    assert lir["num_target_missing"] == 1
    assert lir["num_empty_history"] == 1
    assert lir["num_users_all_scores_tied"] >= 1  # u4 has no history: every score 0


def test_empty_corpus_is_refused_with_the_category_name():
    with pytest.raises(ValueError, match="Office"):
        build_catalog([], [], "Office")


def test_shards_resume_and_settings_mismatch_is_refused(tiny_dir, tmp_path):
    config = dataclasses.replace(EvalConfig.tiny(), shard_size=2)
    out = tmp_path / "out"
    first = run_evaluation(tiny_dir, "Office", out, methods=["lir"], config=config,
                           show_progress=False)
    shards = sorted((out / "shards").glob("lir-*.parquet"))
    assert len(shards) == 2
    stamps = [s.stat().st_mtime_ns for s in shards]
    (out / "predictions.parquet").unlink()
    second = run_evaluation(tiny_dir, "Office", out, methods=["lir"], config=config,
                            show_progress=False)
    assert second == first
    assert [s.stat().st_mtime_ns for s in shards] == stamps  # read back, not recomputed
    with pytest.raises(ValueError, match="other settings"):
        run_evaluation(tiny_dir, "Office", out, methods=["lir"],
                       config=dataclasses.replace(config, top_k=3), show_progress=False)


def test_empty_and_unmatched_generations_give_all_tied_scores():
    catalog = build_catalog(list(TEXTS), list(TEXTS.values()), "Office")
    config = EvalConfig.tiny()
    generations = [Generation("", -1.0), Generation("zzz qqq", -2.0), Generation("", -0.5)]
    for method in ("calrec", "calrec_hier", "gpt4rec"):
        scores, extra = generation_scores(method, catalog, generations, config)
        np.testing.assert_array_equal(scores, np.zeros(len(TEXTS)))
        assert extra["num_empty_samples"] == 2
        assert extra["num_unique_samples"] == 2
    _, extra = generation_scores("calrec", catalog, generations, config)
    assert extra["num_format_errors"] == 3


def test_report_across_runs_has_table_and_t_tests(gift_cards_dir, tmp_path):
    config = dataclasses.replace(EvalConfig.tiny(), max_users=30)
    run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / "test", methods=["lir"],
                   config=config, show_progress=False)
    run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / "valid", methods=["lir"],
                   split="valid", config=config, show_progress=False)
    paths = write_report([tmp_path / "test" / "metrics.json", tmp_path / "valid" / "metrics.json"],
                         tmp_path / "report")
    markdown = paths["markdown"].read_text()
    assert "## Gift_Cards (test)" in markdown and "## Gift_Cards (valid)" in markdown
    test_metrics = json.loads((tmp_path / "test" / "metrics.json").read_text())["methods"]["lir"]
    assert f"{test_metrics['mrr_opt']:.4f} / {test_metrics['mrr_pes']:.4f}" in markdown
    assert "<table" in paths["html"].read_text()
    assert paths["plot"].stat().st_size > 0

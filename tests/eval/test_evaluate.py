"""run_evaluation bookkeeping: resumable shards, bad input counted or refused, reports."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from calrec_core.errors import StaleOutputError
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
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")


class _FakeGenerator:
    """Stands in for a model: returns the given generations for every history."""

    def __init__(self, generations):
        self.generations = generations

    def sample(self, histories, template, seed):
        return [list(self.generations) for _ in histories]


def test_changed_inputs_are_refused_not_reused(tiny_dir, tmp_path, dataset_writer):
    out = tmp_path / "out"
    config = EvalConfig.tiny()
    first = run_evaluation(tiny_dir, "Office", out, methods=["lir"], config=config,
                           show_progress=False)
    # Every item text changes (the corpus and the texts inside the split's examples).
    texts = {asin: text.replace("item", "thing") for asin, text in TEXTS.items()}
    test = [{**example(u, a), "texts": [texts.get(x, "Title: gone.") for x in a]}
            for u, a in (("u1", ["A0", "A1"]), ("u2", ["A2", "A3"]), ("u3", ["A4", "A0"]))]
    dataset_writer(tiny_dir, "Office", texts, {"test": test})
    with pytest.raises(StaleOutputError, match=r"inputs\.corpus, inputs\.split"):
        run_evaluation(tiny_dir, "Office", out, methods=["lir"], config=config,
                       show_progress=False)
    fresh = run_evaluation(tiny_dir, "Office", tmp_path / "fresh", methods=["lir"],
                           config=config, show_progress=False)
    assert fresh["methods"]["lir"]["num_users"] == 3 != first["methods"]["lir"]["num_users"]
    manifest = json.loads((tmp_path / "fresh" / "run.json").read_text())
    assert set(manifest["inputs"]) == {"split", "corpus", "model"}
    assert not list((tmp_path / "fresh").glob(".*.tmp"))  # written by rename, none left over


def test_a_failed_run_does_not_block_its_folder(tiny_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        run_evaluation(tiny_dir, "Office", out, methods=["calrec"],
                       model_source=str(tmp_path / "no-such-model"), config=EvalConfig.tiny(),
                       show_progress=False)
    result = run_evaluation(tiny_dir, "Office", out, methods=["lir"], config=EvalConfig.tiny(),
                            show_progress=False)
    assert result["methods"]["lir"]["num_users"] == 4


def test_a_nan_log_probability_is_counted_not_a_crash(tiny_dir):
    from calrec_core.data import read_examples
    from calrec_core.eval.catalog import load_catalog
    from calrec_core.eval.evaluate import score_users, summarize

    config = EvalConfig.tiny()
    catalog = load_catalog(tiny_dir, "Office", config)
    examples = read_examples(tiny_dir, "Office", "test")
    generator = _FakeGenerator([Generation(TEXTS["A1"], float("nan")),
                            Generation(TEXTS["A3"], -2.0), Generation("", float("-inf"))])
    rows = score_users(examples, catalog, ["calrec", "calrec_hier"], config, generator=generator)
    for method, method_rows in rows.items():
        summary = summarize(method_rows)
        users_with_history = sum(1 for ex in examples if len(ex["asins"]) > 1)
        assert summary["num_nonfinite_logprobs"] == 2 * users_with_history, method
        assert all(np.isfinite(row["top_scores"]).all() for row in method_rows)
        assert all(1 <= row["rank_opt"] <= row["rank_pes"] for row in method_rows
                   if row["target_in_corpus"])
    # The finite sample alone decides: A3 is the best match of every user with a history.
    assert [row["top_asins"][0] for row in rows["calrec"] if row["history_len"]] == ["A3"] * 3


def _result(tiny_dir, generator, config):
    """A run_evaluation-shaped result from scored rows (the generator stands in for a model)."""
    from calrec_core.data import read_examples
    from calrec_core.eval.catalog import load_catalog
    from calrec_core.eval.evaluate import preset_name, score_users, summarize

    catalog = load_catalog(tiny_dir, "Office", config)
    examples = read_examples(tiny_dir, "Office", "test")
    rows = score_users(examples, catalog, ["lir", "calrec"], config, generator=generator)
    return {"category": "Office", "split": "test", "model": "fake", "preset": preset_name(config),
            "corpus_size": catalog.size, "config": dataclasses.asdict(config),
            "methods": {m: summarize(r) for m, r in rows.items()}}, rows


def test_reports_state_settings_counts_and_flag_tie_divergence(tiny_dir, tmp_path):
    import pandas as pd

    from calrec_core.eval.report import write_run_report

    config = dataclasses.replace(EvalConfig.tiny(), max_users=5)
    empty = _FakeGenerator([Generation("", -1.0)] * 4)  # footnote 12: all scores tie
    result, rows = _result(tiny_dir, empty, config)
    calrec = result["methods"]["calrec"]
    # u3's target is not in the corpus; the other three win every tie (opt), lose it (pes).
    assert (calrec["recall@1_opt"], calrec["recall@1_pes"]) == (0.75, 0.0)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    report = write_run_report(result, run_dir).read_text()
    assert "Preset: tiny (max_users=5). Users: 4. N_gen: 4" in report
    assert "| num_empty_generations | 0 | 12 |" in report
    warnings = [line for line in report.splitlines() if "WARNING calrec [fake]" in line]
    assert len(warnings) == 1
    assert "4 of 4 users had every catalog score tied, 12 of 12 generations" in warnings[0]

    (run_dir / "metrics.json").write_text(json.dumps(result))
    pd.DataFrame([r for m in rows.values() for r in m]).to_parquet(
        run_dir / "predictions.parquet")
    markdown = write_report([run_dir / "metrics.json"], tmp_path / "rep")["markdown"].read_text()
    assert "run: Preset: tiny (max_users=5). Users: 4. N_gen: 4" in markdown
    assert "| num_users_all_scores_tied | 1 | 4 |" in markdown
    assert "| calrec [fake] (ties: see warning) |" in markdown
    assert markdown.count("WARNING calrec [fake]") == 1
    # A method whose generations discriminate is not flagged.
    result, _ = _result(tiny_dir, _FakeGenerator([Generation(TEXTS["A3"], -1.0)]), config)
    report = write_run_report(result, run_dir).read_text()
    assert "WARNING calrec" not in report and "N_gen: 4" in report

"""The whole DAG on KFP's real local runner with the tiny presets (CI-sized end to end).

One pipeline run over the bundled real sample: ingest (Beam DirectRunner) -> Stage I ->
Stage II per category -> evaluation per category -> report, with a random tiny model. The
pretrained-Gemma baseline is left to ``make demo`` (it loads the real 270M weights).
"""

from __future__ import annotations

import json
import pathlib

import pytest
import yaml

from pipelines import run_local

CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
# Fewer steps than the tiny preset: the test checks wiring and caching, not learning.
PARAMETERS = {"baselines": ["lir"], "stage1_steps": 2, "stage2_steps": 1}


def _task_outputs(run_dir: pathlib.Path) -> dict[str, dict]:
    """Task folder name -> its executor output (artifact metadata as the step wrote it)."""
    outputs = {}
    for path in sorted(run_dir.glob("*/executor_output.json")):
        outputs[path.parent.name] = json.loads(path.read_text())
    return outputs


def _runs(pipeline_root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(path for path in pipeline_root.iterdir() if path.is_dir())


@pytest.mark.xdist_group("kfp_local")  # kfp.local keeps one process-wide configuration
def test_tiny_dag_runs_end_to_end_then_reuses_every_cached_step(tmp_path, sample_dir,
                                                                   sample_config):
    roles = yaml.safe_load(sample_config.read_text())
    output = tmp_path / "run"
    first = run_local(sample_dir, roles, output, preset="tiny", parameters=PARAMETERS)

    report = first.report_markdown.read_text()
    for category in CATEGORIES:
        assert f"## {category} (test)" in report
    assert "| lir" in report or "lir |" in report
    assert report.count("calrec [") >= len(CATEGORIES)
    html = first.report_html.read_text()
    assert "data:image/png;base64," in html and "<table" in html

    (run_dir,) = _runs(first.pipeline_root)
    tasks = _task_outputs(run_dir)
    assert set(tasks) == {"ingest", "train-stage1", "train-stage2", "train-stage2-2",
                          "evaluate", "evaluate-2", "report"}
    dataset = tasks["ingest"]["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert set(dataset["categories"]) == set(CATEGORIES)
    assert dataset["raw_data_version"] and dataset["categories"]["Gift_Cards"]["users"] > 0
    stage1 = tasks["train-stage1"]["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert stage1["stage"] == 1 and 1 <= stage1["selected_step"] <= 2
    assert stage1["config"]["stage1_steps"] == 2 and stage1["config"]["model"] == "tiny"
    selection = tasks["train-stage1"]["artifacts"]["training_metrics"]["artifacts"][0]
    assert selection["metadata"]["selected_step"] == stage1["selected_step"]
    curves = tasks["train-stage1"]["artifacts"]["loss_curves"]["artifacts"][0]["uri"]
    assert "data:image/png;base64," in pathlib.Path(curves).read_text()
    categories_trained = set()
    for name in ("train-stage2", "train-stage2-2"):
        model = tasks[name]["artifacts"]["model"]["artifacts"][0]["metadata"]
        assert model["stage"] == 2 and model["selected_step"] == 1
        assert model["init_model"].endswith("/train-stage1/model")
        categories_trained.add(model["category"])
    assert categories_trained == set(CATEGORIES)
    for name in ("evaluate", "evaluate-2"):
        metrics = tasks[name]["artifacts"]["evaluation_metrics"]["artifacts"][0]["metadata"]
        for method in ("calrec", "lir"):
            assert 0.0 <= metrics[f"{method}.ndcg@10_opt"] <= 1.0
            assert metrics[f"{method}.num_users"] > 0

    # Identical inputs: the local cache answers every task, so no task runs again and the
    # outputs are the first run's artifacts.
    second = run_local(sample_dir, roles, output, preset="tiny", parameters=PARAMETERS)
    assert second.report_artifact == first.report_artifact
    assert second.report_markdown.read_text() == report
    assert all(not _task_outputs(run) for run in _runs(first.pipeline_root) if run != run_dir)

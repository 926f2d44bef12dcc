"""The whole DAG on KFP's real local runner with the tiny presets (CI-sized end to end).

One pipeline run over the bundled real sample: ingest (Beam DirectRunner) -> Stage I ->
Stage II per category -> evaluation per category -> report, with a random tiny model. The
pretrained-Gemma baseline is left to ``make demo`` (it loads the real 270M weights).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import pathlib

import pytest

from calrec_core.data import load_roles_config
from calrec_core.experiment import apply_overrides, preset
from components.raw_manifest import data_version
from pipelines import run_local

CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
# Fewer steps than the tiny preset: the test checks wiring and caching, not learning.
SETTINGS = ["experiment.baselines=lir", "train.stage1_steps=2", "train.stage2_steps=1",
            "train.alpha=0.25"]


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
    experiment = apply_overrides(
        dataclasses.replace(preset("tiny"), roles=load_roles_config(sample_config)), SETTINGS)
    output = tmp_path / "run"
    real_print = builtins.print
    first = run_local(sample_dir, experiment, output)
    # KFP swaps print() for an indenting one while tasks run; the run leaves the real one.
    assert builtins.print is real_print

    report = first.report_markdown.read_text()
    for category in CATEGORIES:
        assert f"## {category} (test)" in report
    assert "| lir" in report or "lir |" in report
    assert report.count("calrec [") >= len(CATEGORIES)
    html = first.report_html.read_text()
    assert "data:image/png;base64," in html and "<table" in html

    (run_dir,) = _runs(first.pipeline_root)
    tasks = _task_outputs(run_dir)
    loops = sorted(run_dir.glob("for-loop-*-iteration-*"))
    assert len(loops) == len(CATEGORIES)
    for loop in loops:  # each category's Stage II and evaluation inside its iteration
        tasks.update({f"{name}@{loop.name}": output
                      for name, output in _task_outputs(loop).items()})
    # One training component serves both stages (the local runner names tasks after it).
    assert {name.split("@")[0] for name in tasks} == {
        "configure", "configure-2", "raw-data-version", "ingest", "train", "train-2",
        "evaluate", "report"}
    dataset = tasks["ingest"]["artifacts"]["dataset"]["artifacts"][0]["metadata"]
    assert set(dataset["categories"]) == set(CATEGORIES)
    assert dataset["raw_data_version"] == data_version(sample_dir)
    assert dataset["raw_data_uri"] == str(pathlib.Path(sample_dir).resolve())
    assert dataset["categories"]["Gift_Cards"]["users"] > 0
    stage1 = tasks["train"]["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert stage1["stage"] == 1 and 1 <= stage1["selected_step"] <= 2
    # The experiment's settings (--set) reached training.
    assert stage1["config"]["stage1_steps"] == 2 and stage1["config"]["model"] == "tiny"
    assert stage1["config"]["alpha"] == 0.25
    selection = tasks["train"]["artifacts"]["training_metrics"]["artifacts"][0]
    assert selection["metadata"]["selected_step"] == stage1["selected_step"]
    curves = tasks["train"]["artifacts"]["loss_curves"]["artifacts"][0]["uri"]
    assert "data:image/png;base64," in pathlib.Path(curves).read_text()
    # The Model artifact is the export alone; checkpoints and events stay in the work folder.
    stage1_model = pathlib.Path(tasks["train"]["artifacts"]["model"]["artifacts"][0]["uri"])
    assert not (stage1_model / "checkpoints").exists()
    assert not (stage1_model / "metrics.jsonl").exists()
    work = pathlib.Path(stage1["work_dir"])
    assert work.parent.parent == output / "checkpoints" and work.name == "train-stage1"
    assert (work / "checkpoints").is_dir()
    assert list(pathlib.Path(stage1["tensorboard_logdir"]).glob("events.out.tfevents.*"))
    categories_trained = set()
    for name in [name for name in tasks if name.startswith("train-2@")]:
        model = tasks[name]["artifacts"]["model"]["artifacts"][0]["metadata"]
        assert model["stage"] == 2 and model["selected_step"] == 1
        assert model["init_model"].endswith("/train/model")
        assert model["config"]["alpha"] == 0.25
        categories_trained.add(model["category"])
    assert categories_trained == set(CATEGORIES)
    for name in [name for name in tasks if name.startswith("evaluate@")]:
        metrics = tasks[name]["artifacts"]["evaluation_metrics"]["artifacts"][0]["metadata"]
        # The tiny preset's model rankings run beside the sampler on the trained model.
        for method in ("calrec", "lir", "calrec_constrained", "calrec_rerank"):
            assert 0.0 <= metrics[f"{method}.ndcg@10_opt"] <= 1.0
            assert metrics[f"{method}.num_users"] > 0
        assert not any(key.startswith("pretrained.") for key in metrics)  # not a baseline here

    # Identical files and parameters: only the data are hashed again; the local cache answers
    # every other task, and the outputs are the first run's artifacts.
    second = run_local(sample_dir, experiment, output)
    assert second.report_artifact == first.report_artifact
    assert second.report_markdown.read_text() == report
    for run in _runs(first.pipeline_root):
        if run != run_dir:
            assert set(_task_outputs(run)) <= {"raw-data-version"}
            assert not list(run.glob("for-loop-*/*/executor_output.json"))

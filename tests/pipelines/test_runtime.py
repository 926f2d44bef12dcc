"""The helpers component steps use to move between KFP artifacts and calrec_core folders."""

from __future__ import annotations

import argparse
import json
import math

import pytest
from kfp.dsl import Metrics

from calrec_core.experiment import ExperimentConfig, apply_overrides, preset
from calrec_core.experiment.steps import as_parameter
from components.configure import configure
from components.raw_manifest import data_version, local_manifest
from components.runtime import (
    StepTimeout,
    artifact_subpath,
    beam_runner_is_remote,
    compilation_cache_dir,
    deadline,
    gcs_uri,
    json_metadata,
    log_numbers,
    stage_summary,
    work_dir,
)
from pipelines.cli import _assignment


def test_fuse_mount_paths_become_gcs_uris_and_local_paths_pass_through():
    assert gcs_uri("/gcs/bucket/raw/amazon") == "gs://bucket/raw/amazon"
    assert gcs_uri("relative/raw") == "relative/raw"


@pytest.mark.parametrize(("args", "remote"), [
    ([], False),
    (["--direct_num_workers=2"], False),
    (["--runner=DirectRunner"], False),
    (["--runner", "PrismRunner"], False),
    (["--runner=DataflowRunner", "--project=p", "--region=r"], True),
    (["--runner", "DataflowRunner"], True),
])
def test_remote_beam_runners_are_recognised(args, remote):
    assert beam_runner_is_remote(args) is remote


def test_metadata_survives_json(tmp_path):
    encoded = json_metadata({"path": tmp_path, "loss": math.nan, "steps": (1, 2)})
    assert encoded == {"path": str(tmp_path), "loss": "nan", "steps": [1, 2]}


def test_log_numbers_logs_every_finite_number_under_dotted_names(tmp_path):
    metrics = Metrics(name="m", uri=str(tmp_path / "metrics"))
    logged = log_numbers(metrics, {"calrec": {"ndcg@10_opt": 0.25, "num_users": 6, "bad": math.inf},
                                   "lir": {"ndcg@10_opt": 0.125, "label": "x", "ok": True}})
    assert logged == 3
    assert metrics.metadata == {"calrec.ndcg@10_opt": 0.25, "calrec.num_users": 6.0,
                                "lir.ndcg@10_opt": 0.125}
    # Mirrored into the artifact's file, so the artifact exists for KFP's local cache.
    assert json.loads((tmp_path / "metrics").read_text()) == metrics.metadata


def test_artifact_subpath_is_relative_and_refuses_paths_outside(tmp_path):
    (tmp_path / "model" / "selected").mkdir(parents=True)
    assert artifact_subpath(tmp_path / "model" / "selected", str(tmp_path / "model")) == "selected"
    with pytest.raises(ValueError):
        artifact_subpath(tmp_path, str(tmp_path / "model"))


def test_local_data_version_changes_with_content_and_names_only(tmp_path):
    (tmp_path / "a.json").write_text("one")
    first = data_version(tmp_path)
    assert first.startswith("sha256:") and data_version(tmp_path) == first
    assert local_manifest(tmp_path)[0][:2] == ("a.json", 3)
    (tmp_path / "a.json").write_text("two")
    assert data_version(tmp_path) != first
    (tmp_path / "a.json").write_text("one")
    (tmp_path / "a.json").rename(tmp_path / "b.json")
    assert data_version(tmp_path) != first
    with pytest.raises(FileNotFoundError):
        data_version(tmp_path / "missing")


def test_work_folders_are_run_and_task_scoped_and_outside_the_model_artifact(tmp_path):
    model = str(tmp_path / "task" / "model")
    assert work_dir("gs://b/ckpt", "gs://b/root", "run-1", "train-stage1", model) == (
        "gs://b/ckpt/run-1/train-stage1")
    assert work_dir("", "gs://b/root", "run-1", "train-stage2-Gift_Cards", model) == (
        "gs://b/root/checkpoints/run-1/train-stage2-Gift_Cards")
    # A backend that leaves the placeholders unresolved: beside the artifact, never inside.
    assert work_dir("", "{{$.pipeline_root}}", "{{$.pipeline_job_uuid}}", "t", model) == (
        str(tmp_path / "task" / "t-work"))
    assert compilation_cache_dir("", "", "gs://b/root") == "gs://b/root/checkpoints/jax-cache"
    assert compilation_cache_dir("gs://b/jax", "", "gs://b/root") == "gs://b/jax"
    assert compilation_cache_dir("off", "gs://b/ckpt", "gs://b/root") == ""
    assert gcs_uri("/gcs/b/x") == "gs://b/x" and gcs_uri("/tmp/x") == "/tmp/x"


def test_deadline_interrupts_a_step_that_runs_too_long():
    import time

    with (pytest.raises(StepTimeout, match="train-stage1 ran past its limit"),
          deadline(0.5 / 3600, "train-stage1")):
        time.sleep(5)
    with deadline(0, "no limit"):
        time.sleep(0.01)


def _as_kfp_carries_it(value):
    """KFP's JSON parameters carry every number as a float."""
    return json.loads(json.dumps(value), parse_int=float)


def test_configure_reads_the_experiment_as_kfp_carries_it_and_checks_the_compiled_roles():
    config = apply_overrides(preset("tiny"), ["train.alpha=0", "eval.n_gen=2"])
    ingest, train, evaluate = map(json.loads, configure(
        _as_kfp_carries_it(as_parameter(config)), ["Gift_Cards", "Magazine_Subscriptions"]))
    assert ingest["seed"] == config.roles.seed and isinstance(ingest["seed"], int)
    assert ExperimentConfig.from_dict(train).train == config.train
    assert ExperimentConfig.from_dict(evaluate).eval == config.eval
    roles = config.to_dict()["roles"]
    roles["categories"]["Gift_Cards"]["role"] = "pretrain"
    with pytest.raises(ValueError, match=r"\['Gift_Cards'\] no 'eval' role.*recompile"):
        configure({**config.to_dict(), "roles": roles}, ["Gift_Cards", "Magazine_Subscriptions"])
    with pytest.raises(ValueError, match="unknown field 'alpah'"):
        configure({"preset": "tiny", "train": {"alpah": 0}}, ["Gift_Cards"])


def test_cli_parameters_keep_their_types():
    assert _assignment("alpha=0.25") == ("alpha", 0.25)
    assert _assignment("stage1_steps=3") == ("stage1_steps", 3)
    assert _assignment("baselines=[lir]") == ("baselines", ["lir"])
    assert _assignment("raw_data_uri=gs://b/raw") == ("raw_data_uri", "gs://b/raw")
    with pytest.raises(argparse.ArgumentTypeError):
        _assignment("no-equals-sign")


def test_stage_summary_keeps_selection_and_drops_absolute_folders(tmp_path):
    from calrec_core.train import StageResult

    result = StageResult(checkpoint_dir=str(tmp_path / "selected"), selected_step=4,
                         best_metric=0.125, metric_name="ndcg@10_pes",
                         history=({"step": 4, "value": 0.125},), run_dir=str(tmp_path))
    metadata, metrics = stage_summary(result)
    assert metadata == {"selected_step": 4, "best_metric": 0.125, "metric_name": "ndcg@10_pes",
                        "history": [{"step": 4, "value": 0.125}]}
    assert metrics == {"selected_step": 4, "selected_ndcg@10_pes": 0.125}


def test_run_local_refuses_unknown_parameters_before_running_anything(tmp_path, sample_dir):
    from pipelines import run_local

    # Experiment settings are no parameters: they go through the experiment (--set).
    with pytest.raises(ValueError, match=r"unknown pipeline parameters \['alpha'\]"):
        run_local(sample_dir, preset("tiny"), tmp_path, parameters={"alpha": 0.1})
    with pytest.raises(ValueError, match="the experiment is run_local's own argument"):
        run_local(sample_dir, preset("tiny"), tmp_path, parameters={"experiment": {}})
    assert not (tmp_path / "pipeline_root").exists()

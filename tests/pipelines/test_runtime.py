"""The helpers component steps use to move between KFP artifacts and calrec_core folders."""

from __future__ import annotations

import argparse
import json
import math

import pytest
from kfp.dsl import Metrics

from components.runtime import (
    artifact_subpath,
    beam_runner_is_remote,
    json_metadata,
    local_path,
    log_numbers,
    restore_integers,
    stage_summary,
    write_image_html,
)
from pipelines.cli import _assignment
from pipelines.local import fingerprint_files


def test_gcs_uris_map_to_the_vertex_fuse_mount_and_local_paths_pass_through():
    assert local_path("gs://bucket/raw/amazon") == "/gcs/bucket/raw/amazon"
    assert local_path("relative/raw") == "relative/raw"
    with pytest.raises(ValueError):
        local_path("")


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


def test_metadata_survives_json_and_integers_come_back_after_the_float_round_trip(tmp_path):
    value = {"seed": 20240101.0, "rate": 0.5, "nested": [3.0, {"steps": 6.0}], "flag": True}
    assert restore_integers(value) == {"seed": 20240101, "rate": 0.5,
                                       "nested": [3, {"steps": 6}], "flag": True}
    assert isinstance(restore_integers(value)["seed"], int)
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


def test_fingerprint_changes_with_content_and_names_only(tmp_path):
    (tmp_path / "a.json").write_text("one")
    first = fingerprint_files(tmp_path)
    assert fingerprint_files(tmp_path) == first
    (tmp_path / "a.json").write_text("two")
    assert fingerprint_files(tmp_path) != first
    (tmp_path / "a.json").write_text("one")
    (tmp_path / "a.json").rename(tmp_path / "b.json")
    assert fingerprint_files(tmp_path) != first
    with pytest.raises(FileNotFoundError):
        fingerprint_files(tmp_path / "missing")


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


def test_plots_are_inlined_into_a_single_html_file(tmp_path):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    write_image_html(png, str(tmp_path / "page.html"), "Losses <stage I>")
    page = (tmp_path / "page.html").read_text()
    assert "Losses &lt;stage I&gt;" in page
    assert "data:image/png;base64,iVBORw0KGgpmYWtl" in page


def test_run_local_refuses_unknown_parameters_before_running_anything(tmp_path, sample_dir,
                                                                      sample_config):
    import yaml

    from pipelines import run_local

    roles = yaml.safe_load(sample_config.read_text())
    with pytest.raises(ValueError, match=r"unknown pipeline parameters \['alpah'\]"):
        run_local(sample_dir, roles, tmp_path, preset="tiny", parameters={"alpah": 0.1})
    assert not (tmp_path / "pipeline_root").exists()

"""Stage I -> Stage II -> evaluation -> report with every input and output on gs:// (a local
Cloud Storage server) gives what the same run on local folders gives, and leaves its
checkpoints, exports, metrics and reports in the bucket."""

from __future__ import annotations

import json

import pytest

from calrec_core import storage

pytestmark = pytest.mark.xdist_group("cloud_storage")

CATEGORY = "Gift_Cards"


def _run(data, output):
    from calrec_core.eval import EvalConfig, run_evaluation, write_report
    from calrec_core.train import TrainConfig, run_stage1, run_stage2

    config = TrainConfig.tiny()
    stage1 = run_stage1(data, storage.join(output, "stage1"), config)
    stage2 = run_stage2(data, CATEGORY, stage1.checkpoint_dir, storage.join(output, "stage2"),
                        config)
    evaluation = storage.join(output, "evaluation")
    metrics = run_evaluation(data, CATEGORY, evaluation, model_source=stage2.checkpoint_dir,
                             methods=["calrec", "lir"], config=EvalConfig.tiny(),
                             show_progress=False)
    report = write_report([storage.join(evaluation, "metrics.json")],
                          storage.join(output, "report"))
    return stage1, stage2, metrics, report


@pytest.fixture(scope="module")
def runs(cloud_storage, ingested_sample, tmp_path_factory):
    bucket_data = cloud_storage.folder("ingested")
    storage.copy_tree(ingested_sample, bucket_data)
    remote_output = cloud_storage.folder("run")
    remote = _run(bucket_data, remote_output)
    local = _run(str(ingested_sample), str(tmp_path_factory.mktemp("local-run")))
    return {"remote": remote, "local": local, "output": remote_output, "data": bucket_data}


def test_the_bucket_run_equals_the_local_run(runs):
    from calrec_core.train import read_metrics

    (r1, r2, r_metrics, _), (l1, l2, l_metrics, _) = runs["remote"], runs["local"]
    for remote, local in ((r1, l1), (r2, l2)):
        assert remote.selected_step == local.selected_step
        assert remote.history == local.history
        losses = [[r["loss"] for r in read_metrics(result.run_dir) if r["kind"] == "train"]
                  for result in (remote, local)]
        assert losses[0] == losses[1] and losses[0]
    assert r_metrics["methods"] == l_metrics["methods"]


def test_outputs_are_in_the_bucket(runs):
    from calrec_core.model.export import load_trained, read_model_info

    output = runs["output"]
    stage1, stage2, _, report = runs["remote"]
    assert stage2.checkpoint_dir.startswith("gs://")
    names = {str(path)[len(output) + 1:] for path in storage.files_under(output)}
    for expected in ("stage1/metrics.jsonl", "stage2/metrics.jsonl", "stage1/losses.png",
                     "stage2/selected/model.json", "evaluation/metrics.json",
                     "evaluation/predictions.parquet", "evaluation/report.md",
                     "evaluation/metrics.png", "report/report.md", "report/report.png"):
        assert expected in names, sorted(names)
    assert any(name.startswith("stage1/checkpoints/") for name in names)
    # TensorBoard event files in the bucket hold the same losses as metrics.jsonl.
    from test_metrics_tensorboard import _events, _scalars

    from calrec_core.train import read_metrics

    with storage.local_dir(stage2.run_dir) as local:
        losses = [value for tag, _, value in _scalars(_events(local)) if tag == "train/loss"]
    logged = [r["loss"] for r in read_metrics(stage2.run_dir) if r["kind"] == "train"]
    assert losses == pytest.approx(logged) and losses
    # The export in the bucket loads, and Stage II records where it started.
    info = read_model_info(stage2.checkpoint_dir)
    assert info["init"] and json.loads(json.dumps(info))
    model, tokenizer = load_trained(stage2.checkpoint_dir)
    assert tokenizer.encode("gift card") and model.config == load_trained(
        stage1.checkpoint_dir)[0].config
    assert "Gift_Cards" in report["markdown"].read_text()


def test_a_bucket_run_resumes_from_its_checkpoints(runs):
    """Rerun on the finished run's folder: it resumes at its last checkpoint in the bucket
    and ends with the same selection."""
    from calrec_core.train import TrainConfig, run_stage1

    stage1 = runs["remote"][0]
    again = run_stage1(runs["data"], stage1.run_dir, TrainConfig.tiny())
    assert again.selected_step == stage1.selected_step and again.history == stage1.history

"""Stage I -> Stage II end to end with the tiny preset on the ingested bundled sample, through
the real ``calrec train`` command: on 1 and on 8 (fake CPU) devices, killed-and-resumed, and
the ablation switches. Runs share a JAX compilation cache so repeated programs compile once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.xdist_group("train_stages")

# 1-device and 8-device runs reduce in different orders; their float32 losses agree to this.
DEVICE_RTOL = 1e-4


def _calrec(args, cache_dir, devices=1, check=True):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    if args[0] == "train":
        args = [*args, "--compilation-cache", str(cache_dir)]
    process = subprocess.run([sys.executable, "-m", "calrec_core.cli", *args], env=env,
                             capture_output=True, text=True, timeout=900)
    if check and process.returncode != 0:
        raise AssertionError(f"calrec {' '.join(args)} failed:\n{process.stderr[-4000:]}")
    return process


def _result(process):
    return json.loads(process.stdout[process.stdout.index("{"):])


def _train_records(run_dir):
    from calrec_core.train import read_metrics

    return [r for r in read_metrics(run_dir) if r["kind"] == "train"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ingested_sample):
    root = tmp_path_factory.mktemp("train_runs")
    cache = root / "jax_cache"
    data = str(ingested_sample)
    results = {}
    for name, devices in (("one", 1), ("eight", 8)):
        stage1 = _calrec(["train", "--stage", "1", "--data", data, "--output",
                          str(root / name / "s1"), "--preset", "tiny"], cache, devices)
        results[name, "s1"] = _result(stage1)
        # On 8 devices Stage II also shards the parameters (mesh data=4 x fsdp=2).
        fsdp = ["--set", "fsdp=2"] if devices == 8 else []
        stage2 = _calrec(["train", "--stage", "2", "--category", "Gift_Cards", "--init",
                          results[name, "s1"]["checkpoint_dir"], "--data", data, "--output",
                          str(root / name / "s2"), "--preset", "tiny", *fsdp], cache, devices)
        results[name, "s2"] = _result(stage2)
    return {"root": root, "cache": cache, "data": data, "results": results}


def test_stage1_then_stage2_selects_and_exports(runs):
    from calrec_core.model.export import load_trained

    stage1, stage2 = runs["results"]["one", "s1"], runs["results"]["one", "s2"]
    for result, steps in ((stage1, 6), (stage2, 4)):
        records = _train_records(result["run_dir"])
        assert [r["step"] for r in records] == list(range(1, steps + 1))
        for record in records:
            assert all(math.isfinite(record[k]) for k in ("loss", "nig", "tt", "ut"))
            assert record["loss"] == pytest.approx(
                0.9 * record["nig"] + 0.125 * record["tt"] - 0.025 * record["ut"], rel=1e-5)
        history = result["history"]
        best = min(history, key=lambda h: h["value"])  # valid_loss: lower is better.
        assert result["selected_step"] == best["step"] and result["metric_name"] == "valid_loss"
    # Stage I has no validation-role category here: it selects on both eval categories' mean.
    assert set(stage1["history"][0]["categories"]) == {"Gift_Cards", "Magazine_Subscriptions"}
    assert set(stage2["history"][0]["categories"]) == {"Gift_Cards"}
    assert stage1["history"][-1]["value"] < stage1["history"][0]["value"]
    assert (runs["root"] / "one" / "s1" / "losses.png").read_bytes()[:4] == b"\x89PNG"
    info = json.loads((runs["root"] / "one" / "s2" / "selected" / "model.json").read_text())
    assert info["init"] == stage1["checkpoint_dir"] and info["stage"] == "stage2"
    # The export loads in this (fresh) process and reproduces the selection metric.
    model, tokenizer = load_trained(stage2["checkpoint_dir"])
    from calrec_core.train.batching import ExampleEncoder
    from calrec_core.train.config import TrainConfig
    from calrec_core.train.examples import validation_examples
    from calrec_core.train.losses import nig_loss
    from calrec_core.train.stream import validation_batches

    config = TrainConfig.tiny()
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    pairs = validation_examples(runs["data"], "Gift_Cards", config.eval_max_users)
    total = count = 0.0
    for batch in validation_batches(pairs, encoder, config, rows=4):
        out = model(batch.tokens, batch.positions, batch.input_mask, logits_at=batch.logits_at)
        tokens = float(batch.label_mask.sum())
        total += float(nig_loss(out.logits, batch.labels, batch.label_mask)) * tokens
        count += tokens
    assert total / count == pytest.approx(stage2["best_metric"], rel=1e-4)


def test_one_and_eight_devices_give_the_same_losses(runs):
    for stage in ("s1", "s2"):
        one = _train_records(runs["results"]["one", stage]["run_dir"])
        eight = _train_records(runs["results"]["eight", stage]["run_dir"])
        for key in ("loss", "nig", "tt", "ut"):
            np.testing.assert_allclose([r[key] for r in eight], [r[key] for r in one],
                                       rtol=DEVICE_RTOL, err_msg=f"{stage} {key}")
        assert (runs["results"]["one", stage]["selected_step"] ==
                runs["results"]["eight", stage]["selected_step"])


def test_stopped_and_resumed_run_repeats_the_uninterrupted_losses(runs):
    output = str(runs["root"] / "resumed" / "s1")
    args = ["train", "--stage", "1", "--data", runs["data"], "--output", output,
            "--preset", "tiny"]
    _calrec([*args, "--set", "stage1_steps=3"], runs["cache"])  # Stops after step 3.
    resumed = _result(_calrec(args, runs["cache"]))  # Resumes from the step-3 checkpoint.
    uninterrupted = runs["results"]["one", "s1"]
    keys = ("loss", "nig", "tt", "ut", "grad_norm", "target_tokens")
    got = [[r[k] for k in keys] for r in _train_records(output)]
    want = [[r[k] for k in keys] for r in _train_records(uninterrupted["run_dir"])]
    assert got == want  # Exactly equal, not approximately.
    assert resumed["history"] == uninterrupted["history"]
    assert resumed["selected_step"] == uninterrupted["selected_step"]


def test_ablations_and_loss_plot(runs, tmp_path):
    # w/o Stage I (random tiny weights) and w/o contrastive in one run.
    output = runs["root"] / "ablation" / "s2"
    result = _result(_calrec(
        ["train", "--stage", "2", "--category", "Magazine_Subscriptions", "--init", "none",
         "--data", runs["data"], "--output", str(output), "--preset", "tiny",
         "--set", "alpha=0", "--set", "beta=0"], runs["cache"]))
    records = _train_records(result["run_dir"])
    assert all(r["tt"] == 0.0 and r["ut"] == 0.0 and r["loss"] == r["nig"] for r in records)
    plot = tmp_path / "losses.png"
    _calrec(["plot-losses", runs["results"]["one", "s2"]["run_dir"], str(output),
             "--labels", "CALRec", "w/o contrastive", "--output", str(plot)], runs["cache"])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_configuration_fails_at_start(runs):
    data = runs["data"]
    uneven = _calrec(["train", "--stage", "1", "--data", data, "--output",
                      str(runs["root"] / "bad1"), "--preset", "tiny", "--set", "batch_size=12",
                      "--set", "microbatches=1"], runs["cache"], devices=8, check=False)
    assert uneven.returncode == 1 and "do not split over 8 devices" in uneven.stderr
    missing = _calrec(["train", "--stage", "2", "--category", "Nope", "--init", "none",
                       "--data", data, "--output", str(runs["root"] / "bad2"), "--preset",
                       "tiny"], runs["cache"], check=False)
    assert missing.returncode == 1 and "'Nope'" in missing.stderr
    other = _calrec(["train", "--stage", "2", "--category", "Gift_Cards", "--init",
                     runs["results"]["one", "s1"]["checkpoint_dir"], "--data", data,
                     "--output", str(runs["root"] / "bad3"), "--preset", "demo"],
                    runs["cache"], check=False)
    assert other.returncode == 1 and "holds a 'tiny' model" in other.stderr
    changed = _calrec(["train", "--stage", "1", "--data", data, "--output",
                       runs["results"]["one", "s1"]["run_dir"], "--preset", "tiny",
                       "--set", "batch_size=8"], runs["cache"], check=False)
    assert changed.returncode == 1 and "cannot resume with other ['batch_size']" in changed.stderr

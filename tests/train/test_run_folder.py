"""One writer per run folder (a second run is refused in one line while the first runs; a
killed one leaves no lock behind), and a resume that refuses any change to what it computes."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

from calrec_core import cli
from calrec_core.folder_lock import FolderInUseError, folder_lock
from calrec_core.train.config import TrainConfig

pytestmark = pytest.mark.xdist_group("train_stages")
ROOT = pathlib.Path(__file__).resolve().parents[2]


def _holder(folder: pathlib.Path) -> subprocess.Popen:
    """A child process that holds ``folder`` until it is killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from calrec_core.folder_lock import folder_lock
        with folder_lock({str(folder)!r}, "holder"):
            print("held", flush=True)
            time.sleep(600)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                             env=env)
    assert child.stdout.readline().strip() == "held"
    return child


def _one_line(capsys, code):
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    return lines[0]


def test_a_second_writer_is_refused_in_one_line_until_the_first_is_killed(
        ingested_sample, sample_dir, sample_config, tmp_path, capsys):
    folder = tmp_path / "run"
    child = _holder(folder)
    try:
        commands = {
            "train": ["train", "--stage", "1", "--data", str(ingested_sample), "--output",
                      str(folder), "--preset", "tiny"],
            "evaluate": ["evaluate", "--data", str(ingested_sample), "--category",
                         "Gift_Cards", "--methods", "lir", "--preset", "tiny", "--output",
                         str(folder)],
            "ingest": ["ingest", "--data", str(sample_dir), "--roles", str(sample_config),
                       "--output", str(folder)],
            "experiment": ["experiment", "--preset", "tiny", "--ingested",
                           str(ingested_sample), "--output", str(folder)],
        }
        for name, argv in commands.items():
            line = _one_line(capsys, cli.main(argv))
            assert line.startswith(f"calrec {name}: {folder} is in use by another calrec run "
                                   f"(calrec holder, pid {child.pid} on "), line
        assert sorted(p.name for p in folder.iterdir()) == [".calrec.lock"]  # nothing written
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # The killed holder left no lock: the folder is free at once.
    with folder_lock(folder, "after"):
        with folder_lock(folder, "nested"):  # the same process may nest
            pass
        other = _holder_refused(folder)
        assert "calrec after, pid" in other


def _holder_refused(folder: pathlib.Path) -> str:
    """What a child process is told when it tries to lock ``folder``."""
    code = textwrap.dedent(f"""
        from calrec_core.folder_lock import FolderInUseError, folder_lock
        try:
            with folder_lock({str(folder)!r}, "second"):
                print("not refused")
        except FolderInUseError as error:
            print(error)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, check=True).stdout


def test_the_lock_refuses_in_process_too_and_leaves_no_file(tmp_path):
    # flock belongs to an open file, so another descriptor stands in for another process.
    import fcntl

    folder = tmp_path / "f"
    with folder_lock(folder, "first"):
        assert "calrec first, pid" in (folder / ".calrec.lock").read_text()
    assert list(folder.iterdir()) == []  # released: nothing left in the output folder
    descriptor = os.open(folder / ".calrec.lock", os.O_RDWR | os.O_CREAT)
    os.write(descriptor, b"calrec other, pid 1 on elsewhere\n")
    fcntl.flock(descriptor, fcntl.LOCK_EX)
    try:
        with pytest.raises(FolderInUseError, match="calrec other, pid 1 on elsewhere"), \
                folder_lock(folder, "second"):
            pass
    finally:
        os.close(descriptor)


def test_a_resume_refuses_any_change_to_what_it_computes(ingested_sample, tmp_path):
    from calrec_core.train.stages import run_stage1

    config = dataclasses.replace(TrainConfig.tiny(), stage1_steps=3)
    run = tmp_path / "s1"
    run_stage1(ingested_sample, run, config)
    for change in ({"learning_rate": 1e-3}, {"lr_schedule": "cosine", "lr_decay_steps": 5},
                   {"warmup_steps": 2}, {"eval_every": 2}):
        with pytest.raises(ValueError, match="cannot resume with other") as caught:
            run_stage1(ingested_sample, run,
                       dataclasses.replace(config, stage1_steps=6, **change))
        assert all(repr(name) in str(caught.value) for name in change), caught.value
    # Running longer, logging or checkpointing at another pace is still a resume.
    result = run_stage1(ingested_sample, run, dataclasses.replace(
        config, stage1_steps=6, log_every=2, checkpoint_every=6))
    assert [entry["step"] for entry in result.history] == [3, 6]


def test_a_resume_drops_the_records_two_runs_once_wrote_twice(tmp_path):
    from calrec_core.train.metrics import METRICS_FILE, MetricsLog, read_metrics

    records = [{"kind": kind, "step": step, "loss": 1.0 / step} for step in (1, 2, 3)
               for kind in ("train", "eval")]
    doubled = [record for record in records for _ in range(2)]  # two runs, one folder
    (tmp_path / METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in doubled))
    log = MetricsLog(tmp_path, resume_step=2, tensorboard=False)
    log.close()
    assert read_metrics(tmp_path / METRICS_FILE) == [r for r in records if r["step"] <= 2]

"""Property: random sequences of SIGKILLs over ``calrec ingest``, ``evaluate`` and ``train``
(whose model selection exports) leave every folder either complete or refused in one line,
and a rerun after the kills finishes with the uninterrupted result.

Seeded and bounded: each command is killed at a random moment a few times, on a few hundred
input lines and the tiny preset; a second command started on a running one's folder must be
refused in one line."""

from __future__ import annotations

import json
import os
import pathlib
import random
import signal
import subprocess
import sys

import pytest

from calrec_core import cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.xdist_group("train_stages")


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


def _start(argv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "calrec_core.cli", *argv], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _kill_at_random(argv, rng: random.Random, longest: float) -> None:
    """Runs the command and SIGKILLs it after a random delay (unless it ended before)."""
    process = _start(argv)
    try:
        process.wait(timeout=rng.uniform(0.0, longest))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
    process.communicate()


def _complete_or_refused(capsys, argv) -> bool:
    """Runs a command in process: True when it succeeds, False when it is refused in one line."""
    capsys.readouterr()
    code = cli.main(argv)
    err = capsys.readouterr().err.strip()
    if code == 0:
        return True
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return False


def _raw(folder: pathlib.Path, rng: random.Random) -> None:
    import gzip

    folder.mkdir()
    for category in ("A", "B"):
        rows = [json.dumps({"reviewerID": f"{category}{user}", "asin": f"I{rng.randrange(12)}",
                            "unixReviewTime": 1000 + event, "overall": 5.0})
                for user in range(40) for event in range(4)]
        (folder / f"{category}_5.json.gz").write_bytes(gzip.compress(
            ("\n".join(rows) + "\n").encode()))
        meta = [json.dumps({"asin": f"I{i}", "title": f"{category} item {i}"})
                for i in range(12)]
        (folder / f"meta_{category}.json.gz").write_bytes(gzip.compress(
            ("\n".join(meta) + "\n").encode()))


@pytest.mark.parametrize("seed", [0])
def test_random_kills_leave_every_folder_complete_or_refused(tmp_path, capsys, seed):
    from calrec_core.data import run_ingest

    rng = random.Random(seed)
    raw = tmp_path / "raw"
    _raw(raw, rng)
    roles = tmp_path / "roles.yaml"
    roles.write_text("seed: 3\ncategories:\n  A:\n    role: eval\n  B:\n    role: eval\n")
    reference = tmp_path / "reference"
    run_ingest(raw, roles, reference)

    data = tmp_path / "data"
    ingest = ["ingest", "--data", str(raw), "--roles", str(roles), "--output", str(data)]
    for _ in range(2):
        _kill_at_random(ingest, rng, longest=6.0)
        if _complete_or_refused(capsys, ["stats", str(data)]):  # killed after its end
            assert json.loads((data / "stats.json").read_text()) == json.loads(
                (reference / "stats.json").read_text())
    assert cli.main(ingest) == 0
    assert (data / "stats.json").read_bytes() == (reference / "stats.json").read_bytes()

    # Evaluation: two at once on one folder (one is refused), then kills, then a resume.
    evaluation = tmp_path / "eval"
    evaluate = ["evaluate", "--data", str(data), "--category", "A", "--methods", "lir",
                "--preset", "tiny", "--output", str(evaluation)]
    first, second = _start(evaluate), _start(evaluate)
    results = [(p.wait(), p.communicate()[1]) for p in (first, second)]
    refused = [err for code, err in results if code != 0]
    assert len(refused) <= 1 and all(
        len(err.strip().splitlines()) == 1 and "is in use by another calrec run" in err
        for err in refused), results
    expected = json.loads((evaluation / "metrics.json").read_text())["methods"]
    for _ in range(2):
        _kill_at_random(evaluate, rng, longest=6.0)
        assert _complete_or_refused(capsys, evaluate)
        assert json.loads((evaluation / "metrics.json").read_text())["methods"] == expected

    # Training with exports: killed at random, every kill leaves the export complete or
    # absent, and the resumed run logs each step once.
    from calrec_core.model.export import read_model_info

    run = tmp_path / "run"
    train = ["train", "--stage", "2", "--category", "A", "--init", "none", "--data",
             str(data), "--output", str(run), "--preset", "tiny",
             "--set", "train.stage2_steps=3", "--set", "train.eval_every=1",
             "--set", "train.checkpoint_every=1"]
    _kill_at_random(train, rng, longest=25.0)
    if (run / "selected").exists() or (run / ".selected.partial").exists():
        assert read_model_info(run / "selected")["step"] in (1, 2, 3)
    assert _complete_or_refused(capsys, train)
    result = json.loads((run / "result.json").read_text())
    assert read_model_info(run / "selected")["step"] == result["selected_step"]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "train"]
    assert steps == [1, 2, 3]

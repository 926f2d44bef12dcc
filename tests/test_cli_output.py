"""What a user sees on stderr: an expected failure is one line, with no library's traceback or
warning around it (also from Beam's worker processes); ``--traceback`` shows them. Runs the real
command in a child process, since only there stderr is the user's terminal."""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TWO_WORKERS = ["--", "--direct_num_workers=2", "--direct_running_mode=multi_processing"]


def _calrec(*args: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "calrec_core.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture()
def truncated(tmp_path) -> list[str]:
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = [json.dumps({"reviewerID": f"U{i}", "asin": f"B{j}", "unixReviewTime": j,
                        "overall": 5.0, "reviewText": "x" * 200}) for i in range(40)
            for j in range(3)]
    data = gzip.compress(("\n".join(rows) + "\n").encode())
    (raw / "Good_5.json.gz").write_bytes(data[:-200])
    roles = tmp_path / "roles.yaml"
    roles.write_text("seed: 1\ncategories:\n  Good:\n    role: eval\n")
    return ["ingest", "--data", str(raw), "--roles", str(roles), "--output",
            str(tmp_path / "out")]


@pytest.mark.parametrize("workers", [[], TWO_WORKERS], ids=["in_process", "two_workers"])
def test_an_unreadable_file_is_one_line_and_nothing_else(truncated, workers):
    result = _calrec(*truncated, *workers)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"calrec ingest: {truncated[2]}/Good_5.json.gz: unreadable after line 63: "
        "Compressed file ended before the end-of-stream marker was reached"], result.stderr


def test_traceback_shows_the_library_report(truncated):
    result = _calrec("--traceback", *truncated)
    assert result.returncode == 1
    assert "ERROR:apache_beam" in result.stderr and "Traceback" in result.stderr
    assert "InputError" in result.stderr.splitlines()[-1]


def test_a_successful_ingest_does_not_warn_about_bigquery(tmp_path, truncated):
    raw = pathlib.Path(truncated[2])
    rows = [json.dumps({"reviewerID": f"U{i}", "asin": f"B{j}", "unixReviewTime": j,
                        "overall": 5.0}) for i in range(4) for j in range(3)]
    (raw / "Good_5.json.gz").write_bytes(gzip.compress(("\n".join(rows) + "\n").encode()))
    result = _calrec(*truncated)
    assert result.returncode == 0, result.stderr
    assert "apitools" not in result.stderr and "bigquery" not in result.stderr
    assert result.stdout.splitlines()[-1].startswith("wrote ")

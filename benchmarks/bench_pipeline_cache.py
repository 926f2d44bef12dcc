"""The tiny DAG on KFP's local runner: a cold run, a re-run with identical inputs (every step
served from the local cache) and a re-run with one evaluation parameter changed (only the
evaluation and report steps run again). The cold run is the baseline of both ratios.

    python benchmarks/bench_pipeline_cache.py [--output runs/bench-pipeline]
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import time

from calrec_core.experiment import apply_overrides, preset
from pipelines import run_local

REPO = pathlib.Path(__file__).resolve().parents[1]
SETTINGS = ["experiment.baselines=lir", "train.stage1_steps=2", "train.stage2_steps=1"]


def _tasks_run(pipeline_root: pathlib.Path, before: set[pathlib.Path]) -> list[str]:
    """Task folders with outputs written by the newest run (a fully cached run adds none)."""
    new_runs = set(pipeline_root.iterdir()) - before
    return sorted(path.parent.name for run in new_runs
                  for path in run.glob("*/executor_output.json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-pipeline"))
    args = parser.parse_args()
    output = pathlib.Path(args.output)
    shutil.rmtree(output, ignore_errors=True)
    experiment = apply_overrides(preset("tiny"), SETTINGS)  # the sample's roles
    sample = REPO / "data" / "sample" / "amazon2018"
    root = output / "pipeline_root"
    timings = {}
    for label, config in (
        ("cold", experiment),
        ("identical re-run", experiment),
        ("eval.seed changed", apply_overrides(experiment, ["eval.seed=1"])),
    ):
        before = set(root.iterdir()) if root.exists() else set()
        start = time.perf_counter()
        run_local(sample, config, output)
        timings[label] = (time.perf_counter() - start, _tasks_run(root, before))
    cold = timings["cold"][0]
    print(f"\n{'run':<20} {'seconds':>8} {'x cold':>7}  tasks executed")
    for label, (seconds, tasks) in timings.items():
        print(f"{label:<20} {seconds:8.1f} {seconds / cold:7.3f}  {', '.join(tasks) or '-'}")


if __name__ == "__main__":
    main()

"""Ingestion throughput (reviews/s) on synthetic raw Amazon-2018-layout data.

Generates N reviews (gzip JSON lines + metadata), then times, on the same data:
  baseline   plain python: gunzip + json.loads of every review line (no grouping, no output)
  ingest     the full Beam pipeline (DirectRunner) for each worker setting asked for
For each worker setting the two run interleaved (benchmarks/interleave.py): reviews/s of
each, and the median of --pairs ratios ingest rate / baseline rate, with the machine's load.

    python benchmarks/bench_ingest.py --reviews 1000000 --workers 1,2 --pairs 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import tempfile
import time

from interleave import interleaved
from tqdm import tqdm

from calrec_core.data import run_ingest
from calrec_core.data.synthetic import SyntheticSpec, write_synthetic


def baseline_parse(path: str) -> tuple[int, float]:
    start = time.perf_counter()
    count = 0
    with gzip.open(path, "rb") as stream:
        for line in stream:
            json.loads(line)
            count += 1
    return count, time.perf_counter() - start


def beam_args(workers: int) -> list[str]:
    if workers <= 1:
        return ["--direct_num_workers=1"]
    return [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reviews", type=int, default=200_000)
    parser.add_argument("--items", type=int, default=0, help="catalog size (default N/40)")
    parser.add_argument("--workers", default="1,2", help="comma-separated DirectRunner workers")
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = pathlib.Path(args.workdir or scratch)
        spec = SyntheticSpec(num_reviews=args.reviews,
                             num_items=args.items or max(100, args.reviews // 40))
        start = time.perf_counter()
        with tqdm(total=spec.num_reviews, desc="generate", unit="review") as bar:
            files = write_synthetic(workdir / "raw", spec, progress=bar.update)
        print(f"generated {spec.num_reviews} reviews in {time.perf_counter() - start:.1f}s")
        config = workdir / "roles.yaml"
        config.write_text(f"seed: 1\ncategories:\n  {spec.category}:\n    role: eval\n")

        count, seconds = baseline_parse(files["reviews"])  # warm-up (page cache)
        results: dict = {"reviews": count}
        for workers in (int(value) for value in args.workers.split(",")):
            runs = []

            def ingest(pair: int, workers=workers, runs=runs) -> None:
                runs.append(run_ingest(workdir / "raw", config,
                                       workdir / f"out{workers}-{pair}", beam_args(workers)))

            timing = interleaved(lambda _: baseline_parse(files["reviews"]), ingest,
                                 args.pairs)
            category = runs[-1]["categories"][spec.category]
            assert all(r["categories"][spec.category] == category for r in runs)
            assert category["read"] == count
            results[f"{workers}_workers"] = {
                "baseline_reviews_per_s": [count / s for s in timing["baseline_s"]],
                "ingest_reviews_per_s": [count / s for s in timing["ours_s"]],
                **timing}
            print(f"ingest, {workers} worker(s): median {timing['median_ratio']:.3f}x the plain "
                  f"parse over {args.pairs} interleaved pairs (load "
                  f"{timing['load_before']['load_1m']} -> {timing['load_after']['load_1m']}); "
                  f"users {category['users']}, items {category['items']}, duplicates "
                  f"{category['strict_duplicates']}")
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

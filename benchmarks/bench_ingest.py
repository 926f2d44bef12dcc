"""Ingestion throughput (reviews/s) on synthetic raw Amazon-2018-layout data.

Generates N reviews (gzip JSON lines + metadata), then times, on the same data:
  baseline   plain python: gunzip + json.loads of every review line (no grouping, no output)
  ingest     the full Beam pipeline (DirectRunner) for each worker setting asked for
and prints reviews/s and the ratio to the baseline.

    python benchmarks/bench_ingest.py --reviews 1000000 --workers 1,2
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import tempfile
import time

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
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=0, help="catalog size (default N/40)")
    parser.add_argument("--workers", default="1,2", help="comma-separated DirectRunner workers")
    parser.add_argument("--workdir", help="keep data here (default: a temporary folder)")
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

        count, seconds = baseline_parse(files["reviews"])
        results = {"reviews": count, "baseline_reviews_per_s": count / seconds}
        print(f"baseline gunzip+json.loads: {count / seconds:,.0f} reviews/s ({seconds:.1f}s)")
        for workers in (int(value) for value in args.workers.split(",")):
            start = time.perf_counter()
            stats = run_ingest(workdir / "raw", config, workdir / f"out{workers}",
                               beam_args(workers))
            seconds = time.perf_counter() - start
            category = stats["categories"][spec.category]
            rate = category["read"] / seconds
            results[f"ingest_{workers}_workers_reviews_per_s"] = rate
            print(f"ingest, {workers} worker(s): {rate:,.0f} reviews/s ({seconds:.1f}s), "
                  f"{rate / results['baseline_reviews_per_s']:.3f}x baseline; users "
                  f"{category['users']}, items {category['items']}, duplicates "
                  f"{category['strict_duplicates']}")
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""Ingestion throughput (reviews/s) on raw Amazon-2018-layout data of about N reviews.

By default the reviews are the bundled real sample's (data/sample/amazon2018: Gift_Cards and
Magazine_Subscriptions, real lines of about 430 bytes on average) repeated until N, each copy's
reviewer ids made distinct so every copy adds new users; the metadata is both real files.
``--synthetic`` uses calrec's synthetic generator instead (shorter lines: about 180 bytes, so
the plain parse is faster and the ratio lower). Then times, on the same data:
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

SAMPLE = pathlib.Path(__file__).resolve().parent.parent / "data" / "sample" / "amazon2018"
SAMPLE_CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
REAL_CATEGORY = "Real_Sample_Repeated"


def write_repeated_real(output_dir: pathlib.Path, num_reviews: int) -> dict:
    """The bundled real reviews, repeated until ``num_reviews`` lines; copy k's reviewer ids
    end in "~k" (the rest of each line is untouched), so copies are new users of the same
    items. Metadata: the real files of both categories, concatenated."""
    lines = []
    for category in SAMPLE_CATEGORIES:
        with gzip.open(SAMPLE / f"{category}_5.json.gz", "rb") as stream:
            lines += stream.read().splitlines()
    output_dir.mkdir(parents=True, exist_ok=True)
    reviews = output_dir / f"{REAL_CATEGORY}_5.json.gz"
    with gzip.open(reviews, "wb", compresslevel=1) as stream:
        for index in range(num_reviews):
            copy, line = divmod(index, len(lines))
            user = json.loads(lines[line])["reviewerID"]
            field = f'"reviewerID": "{user}"'.encode()
            assert field in lines[line], "expected the published field spacing"
            stream.write(lines[line].replace(field, f'"reviewerID": "{user}~{copy}"'.encode())
                         + b"\n")
    with gzip.open(output_dir / f"meta_{REAL_CATEGORY}.json.gz", "wb") as stream:
        for category in SAMPLE_CATEGORIES:
            with gzip.open(SAMPLE / f"meta_{category}.json.gz", "rb") as meta:
                rows = meta.read()
            stream.write(rows if rows.endswith(b"\n") else rows + b"\n")
    return {"reviews": str(reviews), "category": REAL_CATEGORY}


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
    parser.add_argument("--synthetic", action="store_true",
                        help="calrec's synthetic generator instead of the repeated real sample")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        workdir = pathlib.Path(args.workdir or scratch)
        start = time.perf_counter()
        if args.synthetic:
            spec = SyntheticSpec(num_reviews=args.reviews,
                                 num_items=args.items or max(100, args.reviews // 40))
            with tqdm(total=spec.num_reviews, desc="generate", unit="review") as bar:
                files = write_synthetic(workdir / "raw", spec, progress=bar.update)
            category = spec.category
        else:
            files = write_repeated_real(workdir / "raw", args.reviews)
            category = files["category"]
        print(f"wrote {args.reviews} reviews in {time.perf_counter() - start:.1f}s")
        config = workdir / "roles.yaml"
        config.write_text(f"seed: 1\ncategories:\n  {category}:\n    role: eval\n")

        count, seconds = baseline_parse(files["reviews"])  # warm-up (page cache)
        results: dict = {"reviews": count}
        first_counts: dict = {}
        for workers in (int(value) for value in args.workers.split(",")):
            runs = []

            def ingest(pair: int, workers=workers, runs=runs) -> None:
                runs.append(run_ingest(workdir / "raw", config,
                                       workdir / f"out{workers}-{pair}", beam_args(workers)))

            timing = interleaved(lambda _: baseline_parse(files["reviews"]), ingest,
                                 args.pairs)
            counts = runs[-1]["categories"][category]
            # Every count and dead letter identical, whatever the run and the workers.
            first = first_counts.setdefault("counts", counts)
            assert all(r["categories"][category] == first for r in runs)
            assert counts["read"] == count
            results[f"{workers}_workers"] = {
                "baseline_reviews_per_s": [count / s for s in timing["baseline_s"]],
                "ingest_reviews_per_s": [count / s for s in timing["ours_s"]],
                **timing}
            print(f"ingest, {workers} worker(s): median {timing['median_ratio']:.3f}x the plain "
                  f"parse over {args.pairs} interleaved pairs (load "
                  f"{timing['load_before']['load_1m']} -> {timing['load_after']['load_1m']}); "
                  f"users {counts['users']}, items {counts['items']}, duplicates "
                  f"{counts['strict_duplicates']}")
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

"""BM25 + quasi-round-robin fusion for one user: ours vs rank-bm25's get_scores.

Builds a 40k-item corpus from real Office Products item texts (each synthetic item is a
real title with its words shuffled, plus a real category and brand), then times one
user's fusion of 10 generations (Algorithm 1) with our sparse index and with rank-bm25,
checking that both give identical rankings.

    python benchmarks/bench_bm25.py [--meta PATH] [--items 40000] [--users 5]
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import random
import time

import numpy as np

from calrec_core.eval.bm25 import BM25Index, tokenize
from calrec_core.eval.fusion import fuse_scores
from calrec_core.item_text import format_item, make_attributes

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_META = REPO.parent / "shared" / "data" / "office2014" / "meta_Office_Products.json.gz"
FALLBACK_META = REPO / "data" / "sample" / "amazon2018" / "meta_Gift_Cards.json.gz"


def real_items(path: pathlib.Path) -> list[dict]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        rows = [json.loads(line) for line in lines if line.strip()]
    return [r for r in rows if r.get("title")]


def synthetic_corpus(items: list[dict], size: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for i in range(size):
        base = items[i % len(items)]
        words = base["title"].split()
        rng.shuffle(words)
        other = rng.choice(items)
        category = other.get("main_cat") or (other.get("category") or ["Unknown"])[-1]
        texts.append(format_item(make_attributes(" ".join(words), category, base.get("brand"),
                                                 base.get("price"))))
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta", type=pathlib.Path, default=None)
    parser.add_argument("--items", type=int, default=40_000)
    parser.add_argument("--users", type=int, default=5, help="users timed with rank-bm25")
    parser.add_argument("--queries", type=int, default=10, help="N_preds per user")
    args = parser.parse_args()
    meta = args.meta or (DEFAULT_META if DEFAULT_META.is_file() else FALLBACK_META)
    from rank_bm25 import BM25Okapi

    corpus = synthetic_corpus(real_items(meta), args.items)
    start = time.perf_counter()
    index = BM25Index(corpus)
    build_ours = time.perf_counter() - start
    start = time.perf_counter()
    reference = BM25Okapi([tokenize(t) for t in corpus])
    build_reference = time.perf_counter() - start

    rng = np.random.default_rng(0)
    users = [
        ([corpus[i] for i in rng.choice(len(corpus), args.queries, replace=False)],
         sorted(rng.uniform(-10, 0, args.queries), reverse=True))
        for _ in range(args.users)
    ]
    ours_times, reference_times, identical, max_diff = [], [], 0, 0.0
    for queries, logprobs in users:
        # Timed: what evaluation does per user (BM25 of every query, then Algorithm 1 fusion).
        start = time.perf_counter()
        ours = fuse_scores(index.scores(queries), logprobs, 1 / 5000)
        ours_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        columns = np.stack([reference.get_scores(tokenize(q)) for q in queries], axis=1)
        theirs = fuse_scores(columns, logprobs, 1 / 5000)
        reference_times.append(time.perf_counter() - start)
        identical += bool(np.array_equal(np.argsort(-ours, kind="stable"),
                                         np.argsort(-theirs, kind="stable")))
        max_diff = max(max_diff, float(np.abs(ours - theirs).max()))
    ours_ms = 1000 * float(np.median(ours_times))
    reference_ms = 1000 * float(np.median(reference_times))
    print(f"corpus: {len(corpus)} items from {meta.name}; {args.queries} queries per user")
    print(f"index build: ours {build_ours:.2f}s, rank-bm25 {build_reference:.2f}s")
    print(f"per user (median of {args.users}): ours {ours_ms:.2f} ms, "
          f"rank-bm25 {reference_ms:.1f} ms, speed-up {reference_ms / ours_ms:.0f}x")
    print(f"identical full rankings: {identical}/{args.users}; max |fused diff| {max_diff:.2e}")


if __name__ == "__main__":
    main()

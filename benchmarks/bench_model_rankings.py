"""Cost of the model rankings beyond the sampler, on the CPU.

1. The catalog token trie: build time (tokenization and trie separately) and memory (the trie's
   arrays, and the peak Python allocation while building) on a synthetic catalog of
   ``--items`` (40,000) item texts, tokenized by the real Gemma 3 tokenizer (``--tokenizer
   byte`` for the tiny model's).
2. Per-user cost of each ranking against the paper's sampler (N_gen 32 at temperature 0.5,
   up to 80 new tokens) in the same process: after a warm-up of each (compilation), ``--pairs``
   rounds time the sampler and then each ranking on the same users, interleaved; the ratio of
   each round is ranking / sampler, and the median is reported. calrec_rerank is timed twice:
   its own scoring alone (given the sampler's samples, which it reuses when it runs beside the
   sampler) and in full (sampling + scoring).

The default run (the tests' tiny random network and byte tokenizer on the Gift_Cards catalog of
the bundled sample, 2 users) takes a couple of minutes on two idle cores. Its ratios are not
Gemma's: byte tokens make item texts ~4x longer than Gemma tokens (reranking scores ~100 of them
per user), a 512-token vocabulary makes the logits nearly free (most of Gemma 3 270M's
parameters are its 262k-token embedding), and a random network never ends a sample early.
``--model pretrained`` times the real Gemma 3 270M (minutes per user on two cores).

    python benchmarks/bench_model_rankings.py [--model tiny|pretrained] [--users 4] [--pairs 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import pathlib
import random
import statistics
import time
import tracemalloc

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_META = REPO / "data" / "sample" / "amazon2018" / "meta_Gift_Cards.json.gz"
WORDS = ("gift card digital delivery birthday holiday thank you amazon visa balance egift "
         "restaurant movie coffee store online mail box reload plastic premium classic")


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """Item texts in the corpus format, titles of 3-10 random words (brand and price vary)."""
    from calrec_core.item_text import format_item, make_attributes

    rng = random.Random(seed)
    words = WORDS.split()
    return [format_item(make_attributes(
        " ".join(rng.choice(words) for _ in range(rng.randint(3, 10))) + f" {i}",
        "Gift Cards", f"Brand{rng.randint(1, 500)}", f"${rng.randint(5, 200)}.00"))
        for i in range(count)]


def real_texts() -> list[str]:
    from calrec_core.item_text import format_item, make_attributes

    texts = []
    with gzip.open(SAMPLE_META, "rt", encoding="utf-8") as lines:
        for line in lines:
            meta = json.loads(line)
            texts.append(format_item(make_attributes(meta.get("title"), meta.get("main_cat"),
                                                     meta.get("brand"), meta.get("price"))))
    return list(dict.fromkeys(texts))


def gemma_tokenizer():
    from calrec_core.model.loading import ensure_cache
    from calrec_core.model.tokenizer import Tokenizer

    return Tokenizer.load(ensure_cache(None, None))


def bench_trie(items: int, tokenizer) -> dict:
    from calrec_core.eval.likelihood import item_token_ids
    from calrec_core.eval.trie import build_trie

    texts = synthetic_texts(items)
    began = time.perf_counter()
    sequences = item_token_ids(tokenizer, texts)
    tokenized = time.perf_counter() - began
    tracemalloc.start()
    began = time.perf_counter()
    trie = build_trie(sequences)
    built = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {"items": items, "tokens": sum(map(len, sequences)), "nodes": trie.num_nodes,
            "depth": trie.depth, "tokenize_s": round(tokenized, 3), "build_s": round(built, 3),
            "trie_mb": round(trie.nbytes / 2**20, 2), "build_peak_mb": round(peak / 2**20, 1)}


def bench_users(model_name: str, users: int, pairs: int) -> dict:
    from calrec_core.eval import EvalConfig, build_catalog
    from calrec_core.eval.generation import ItemGenerator
    from calrec_core.eval.scoring import generation_scores, model_ranking_scores

    if model_name == "pretrained":
        from calrec_core.model import load_pretrained

        model, tokenizer = load_pretrained()
    else:  # the tests' tiny random network and its byte tokenizer
        from calrec_core.train.config import TrainConfig
        from calrec_core.train.models import fresh_model

        model, tokenizer = fresh_model(TrainConfig.tiny())
    texts = real_texts()
    catalog = build_catalog([f"I{i}" for i in range(len(texts))], texts, "Gift_Cards")
    rng = random.Random(0)
    histories = [rng.sample(texts, 3) for _ in range(users)]
    # The paper's sampler; the rankings with their default settings (B 10, M 50).
    config = dataclasses.replace(EvalConfig.paper(), max_input_len=512, user_batch_size=users,
                                 decode_batch_size=32 * users, length_bucket=64)
    generator = ItemGenerator(model, tokenizer, config)

    def sampler():
        samples = generator.sample(histories, "calrec", config.seed)
        for generations in samples:
            generation_scores("calrec", catalog, generations, config)
        return samples

    samples = sampler()

    def constrained():
        for history in histories:
            model_ranking_scores("calrec_constrained", generator, catalog, history, [], config)

    def rerank_scoring():
        for history, generations in zip(histories, samples, strict=True):
            model_ranking_scores("calrec_rerank", generator, catalog, history, generations,
                                 config)

    def timed(function) -> float:
        began = time.perf_counter()
        function()
        return (time.perf_counter() - began) / users

    for function in (constrained, rerank_scoring):  # warm-up: compilation and the trie
        function()
    rounds = []
    for _ in range(pairs):
        base = timed(sampler)
        rounds.append({"sampler": base, "constrained": timed(constrained),
                       "rerank_scoring": timed(rerank_scoring)})
    median = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    ratios = {
        "constrained / sampler": statistics.median(r["constrained"] / r["sampler"]
                                                   for r in rounds),
        "rerank scoring / sampler": statistics.median(r["rerank_scoring"] / r["sampler"]
                                                      for r in rounds),
        "rerank in full / sampler": statistics.median(1 + r["rerank_scoring"] / r["sampler"]
                                                      for r in rounds),
    }
    return {"model": model_name, "catalog_items": catalog.size, "users": users, "pairs": pairs,
            "seconds_per_user_median": {k: round(v, 4) for k, v in median.items()},
            "ratio_median": {k: round(v, 3) for k, v in ratios.items()},
            "settings": {"n_gen": config.n_gen, "max_new_tokens": config.max_new_tokens,
                         "beam_width": config.beam_width, "rerank_pool": config.rerank_pool}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=40_000, help="synthetic catalog size")
    parser.add_argument("--tokenizer", choices=("gemma", "byte"), default="gemma",
                        help="tokenizer of the trie benchmark")
    parser.add_argument("--model", choices=("tiny", "pretrained"), default="tiny")
    parser.add_argument("--users", type=int, default=2, help="users timed per round")
    parser.add_argument("--pairs", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--skip-users", action="store_true", help="only the trie")
    args = parser.parse_args()
    if args.tokenizer == "gemma":
        tokenizer = gemma_tokenizer()
    else:
        from calrec_core.model.tokenizer import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer()
    print(json.dumps({"trie": {"tokenizer": args.tokenizer,
                               **bench_trie(args.items, tokenizer)}}, indent=2), flush=True)
    if not args.skip_users:
        print(json.dumps({"per_user": bench_users(args.model, args.users, args.pairs)},
                         indent=2))


if __name__ == "__main__":
    main()

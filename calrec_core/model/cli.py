"""``calrec model prepare`` (convert and cache a checkpoint) and ``calrec model sample``."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    model = subparsers.add_parser("model", help="the Gemma 3 model: prepare weights, sample")
    commands = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    prepare = commands.add_parser(
        "prepare", help="convert a checkpoint (default: the packaged GGUF) into the cache"
    )
    _source_arguments(prepare)
    prepare.set_defaults(handler=_prepare)

    sample = commands.add_parser(
        "sample", help="sample continuations of a CALRec prompt built from item texts"
    )
    _source_arguments(sample)
    sample.add_argument(
        "--history",
        required=True,
        help="JSON list of item texts (oldest first), inline or a file path",
    )
    sample.add_argument("--num-samples", type=int, default=4,
                        help="continuations to draw (default 4)")
    sample.add_argument("--temperature", type=float, default=0.5,
                        help="sampling temperature (default 0.5, the paper's)")
    sample.add_argument("--max-new-tokens", type=int, default=80,
                        help="longest continuation in tokens (default 80, the paper's)")
    sample.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    sample.add_argument("--greedy", action="store_true",
                        help="one greedy continuation instead of sampling")
    sample.set_defaults(handler=_sample)


def _source_arguments(parser) -> None:
    parser.add_argument(
        "--weights", "--source", dest="source", default=None, metavar="PATH",
        help="a .gguf file or a HF safetensors directory (default: $CALREC_WEIGHTS, else the "
        "packaged GGUF)",
    )
    parser.add_argument("--cache-dir", default=None, help="where converted weights are kept")


def _prepare(args) -> int:
    import dataclasses

    from calrec_core.model.loading import ensure_cache, read_cached_config

    cache = ensure_cache(args.source, args.cache_dir)
    config = read_cached_config(cache)
    print(json.dumps({"cache": str(cache), "config": dataclasses.asdict(config)}, indent=1))
    return 0


def _read_history(value: str) -> list[str]:
    import pathlib

    path = pathlib.Path(value)
    text = path.read_text(encoding="utf-8") if path.is_file() else value
    history = json.loads(text)
    if not isinstance(history, list) or not history or not all(isinstance(h, str) for h in history):
        raise SystemExit("--history must be a non-empty JSON list of item texts")
    return history


def _sample(args) -> int:
    from calrec_core.model.decoding import generate_texts
    from calrec_core.model.loading import load_pretrained
    from calrec_core.template import encode_example

    history = _read_history(args.history)
    model, tokenizer = load_pretrained(args.source, args.cache_dir)
    prompt = encode_example(
        tokenizer.encode, history, None, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id
    ).prompt_ids
    texts, _, logprobs = generate_texts(
        model,
        tokenizer,
        [prompt],
        num_samples=args.num_samples,
        temperature=args.temperature,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        greedy=args.greedy,
        stop_at_newline=True,
    )
    ranked = sorted(zip(texts[0], logprobs[0], strict=True), key=lambda x: -x[1])
    for text, logprob in ranked:
        print(json.dumps({"logprob": round(logprob, 4), "text": text}))
    return 0

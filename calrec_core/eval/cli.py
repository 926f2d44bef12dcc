"""``calrec evaluate``, ``calrec report`` and ``calrec recommend``."""

from __future__ import annotations

import argparse
import json
import sys

from calrec_core.errors import CalrecError
from calrec_core.overrides import add_preset_arguments


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="rank the full catalog for a split's users and report metrics"
    )
    evaluate.add_argument("--data", required=True, help="ingested data folder (calrec ingest)")
    evaluate.add_argument("--category", required=True, help="the eval category to rank")
    evaluate.add_argument("--split", default="test", choices=("valid", "test"),
                          help="whose targets to rank: n-1 (valid) or n (test, default)")
    evaluate.add_argument("--model", default=None,
                          help="'pretrained' or a trained checkpoint directory")
    evaluate.add_argument("--methods", default="calrec,lir",
                          help="comma-separated: lir, calrec, calrec_hier, gpt4rec, "
                          "calrec_constrained, calrec_rerank")
    add_preset_arguments(evaluate, "eval")
    evaluate.add_argument("--max-users", type=int, default=None,
                          help="override the preset's cap on users evaluated")
    _batching_arguments(evaluate)
    evaluate.add_argument("--output", required=True, help="output directory (resumable)")
    evaluate.set_defaults(handler=_evaluate)

    report = subparsers.add_parser("report", help="Table 2-style report across metrics.json")
    report.add_argument("metrics", nargs="+", help="metrics.json files of evaluation runs")
    report.add_argument("--output", required=True, help="directory for report.md/.html/.png")
    report.set_defaults(handler=_report)

    recommend = subparsers.add_parser("recommend", help="top-K catalog items for one history")
    recommend.add_argument("--history", required=True,
                           help="JSON list of item texts or asins, inline or a file path")
    recommend.add_argument("--data", required=True, help="ingested data folder (calrec ingest)")
    recommend.add_argument("--category", required=True, help="whose catalog to rank")
    recommend.add_argument("--model", default=None,
                           help="'pretrained' or a checkpoint directory (needed unless lir)")
    recommend.add_argument("--method", default="calrec",
                           choices=("calrec", "calrec_hier", "gpt4rec", "lir",
                                    "calrec_constrained", "calrec_rerank"),
                           help="how to rank (default calrec: generations + BM25 fusion; "
                           "calrec_constrained: catalog-constrained decoding; calrec_rerank: "
                           "the model's likelihood of a LIR + fusion candidate pool)")
    add_preset_arguments(recommend, "eval")
    recommend.add_argument("-k", type=int, default=10, help="items to return (default 10)")
    _batching_arguments(recommend)
    recommend.set_defaults(handler=_recommend)


def _batching_arguments(parser) -> None:
    """Accelerator batching, the history lever and the weights, shared by both commands."""
    from calrec_core.model.loading import add_weights_argument

    parser.add_argument("--decode-batch-size", type=int, default=None,
                        help="override the preset's (prompt, sample) rows per decode batch")
    parser.add_argument("--length-bucket", type=int, default=None,
                        help="override the preset's prompt-length bucket in tokens")
    parser.add_argument("--exclude-history", action=argparse.BooleanOptionalAction,
                        default=None, help="leave the user's own history items out of the "
                        "returned top-K (metrics are reported both ways regardless)")
    add_weights_argument(parser)


def _config(args):
    import dataclasses

    from calrec_core.eval.config import EvalConfig
    from calrec_core.model.loading import use_weights

    use_weights(getattr(args, "weights", None))
    for flag in ("max_users", "decode_batch_size", "length_bucket", "k"):
        value = getattr(args, flag, None)
        if value is not None and value < 1:
            name = "-k" if flag == "k" else "--" + flag.replace("_", "-")
            raise CalrecError(f"{name} must be a positive number, got {value}")
    config = EvalConfig.preset(args.preset)
    overrides = {name: getattr(args, name, None) for name in
                 ("max_users", "decode_batch_size", "length_bucket", "exclude_history")}
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    return config.with_overrides(args.set)


def _evaluate(args) -> int:
    from calrec_core.eval.evaluate import preset_name, run_evaluation

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    config = _config(args)
    result = run_evaluation(args.data, args.category, args.output, model_source=args.model,
                            methods=methods, split=args.split, config=config,
                            preset=preset_name(config))
    for method, metrics in result["methods"].items():
        print(f"{method}: ndcg@10 {metrics['ndcg@10_opt']:.4f}/{metrics['ndcg@10_pes']:.4f} "
              f"recall@1 {metrics['recall@1_opt']:.4f}/{metrics['recall@1_pes']:.4f} "
              f"users {metrics['num_users']}")
    print(f"wrote {args.output}/metrics.json, predictions.parquet, report.md")
    return 0


def _report(args) -> int:
    from calrec_core.eval.report import write_report

    paths = write_report(args.metrics, args.output)
    print(f"wrote {paths['markdown']}, {paths['html']}, {paths['plot']}")
    return 0


def _recommend(args) -> int:
    from calrec_core.eval.catalog import load_catalog
    from calrec_core.eval.recommend import parse_history, recommend_with_details
    from calrec_core.eval.scoring import MODEL_METHODS

    config = _config(args)
    history = parse_history(args.history)
    catalog = load_catalog(args.data, args.category, config)
    generator = None
    if args.method in MODEL_METHODS:
        if args.model is None:
            raise CalrecError(f"--method {args.method} needs --model")
        from calrec_core.eval.evaluate import load_model, training_prompt_budget
        from calrec_core.eval.generation import ItemGenerator

        config = config.with_training_budget(training_prompt_budget(args.model))
        generator = ItemGenerator(*load_model(args.model), config)
    result = recommend_with_details(catalog, history, method=args.method, generator=generator,
                                    config=config, k=args.k)
    print(json.dumps(result["items"], indent=2))
    # For the person reading: what the model generated and whether the ranking means anything.
    if generator is not None:
        print(f"{len(result['generations'])} generated texts ({result['num_empty_generations']} "
              "empty), best first:", file=sys.stderr)
        for text in result["generations"]:
            print(f"  {text!r}", file=sys.stderr)
    marked = sum(item["in_history"] for item in result["items"])
    if marked:
        print(f"{marked} of the items are in the history (in_history: true)", file=sys.stderr)
    if result["all_scores_tied"]:
        print("every catalog item scored the same: the order above is catalog order, not a "
              "recommendation", file=sys.stderr)
    return 0

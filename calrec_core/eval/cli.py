"""``calrec evaluate``, ``calrec report`` and ``calrec recommend``."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    evaluate = subparsers.add_parser(
        "evaluate", help="rank the full catalog for a split's users and report metrics"
    )
    evaluate.add_argument("--data", required=True, help="ingested data directory")
    evaluate.add_argument("--category", required=True)
    evaluate.add_argument("--split", default="test", choices=("valid", "test"))
    evaluate.add_argument("--model", default=None,
                          help="'pretrained' or a trained checkpoint directory")
    evaluate.add_argument("--methods", default="calrec,lir",
                          help="comma-separated: lir, calrec, calrec_hier, gpt4rec")
    evaluate.add_argument("--preset", default="demo", choices=("tiny", "demo", "paper"))
    evaluate.add_argument("--max-users", type=int, default=None,
                          help="override the preset's cap on users evaluated")
    evaluate.add_argument("--output", required=True, help="output directory (resumable)")
    evaluate.set_defaults(handler=_evaluate)

    report = subparsers.add_parser("report", help="Table 2-style report across metrics.json")
    report.add_argument("metrics", nargs="+", help="metrics.json files of evaluation runs")
    report.add_argument("--output", required=True, help="directory for report.md/.html/.png")
    report.set_defaults(handler=_report)

    recommend = subparsers.add_parser("recommend", help="top-K catalog items for one history")
    recommend.add_argument("--history", required=True,
                           help="JSON list of item texts or asins, inline or a file path")
    recommend.add_argument("--data", required=True)
    recommend.add_argument("--category", required=True)
    recommend.add_argument("--model", default=None,
                           help="'pretrained' or a checkpoint directory (needed unless lir)")
    recommend.add_argument("--method", default="calrec",
                           choices=("calrec", "calrec_hier", "gpt4rec", "lir"))
    recommend.add_argument("--preset", default="paper", choices=("tiny", "demo", "paper"))
    recommend.add_argument("-k", type=int, default=10)
    recommend.set_defaults(handler=_recommend)


def _config(args):
    import dataclasses

    from calrec_core.eval.config import EvalConfig

    config = EvalConfig.preset(args.preset)
    if getattr(args, "max_users", None) is not None:
        config = dataclasses.replace(config, max_users=args.max_users)
    return config


def _evaluate(args) -> int:
    from calrec_core.eval.evaluate import run_evaluation

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    result = run_evaluation(args.data, args.category, args.output, model_source=args.model,
                            methods=methods, split=args.split, config=_config(args))
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
    from calrec_core.eval.recommend import parse_history, recommend
    from calrec_core.eval.scoring import MODEL_METHODS

    config = _config(args)
    history = parse_history(args.history)
    catalog = load_catalog(args.data, args.category, config)
    sampler = None
    if args.method in MODEL_METHODS:
        if args.model is None:
            raise SystemExit(f"--method {args.method} needs --model")
        from calrec_core.eval.evaluate import load_model
        from calrec_core.eval.generation import Sampler

        sampler = Sampler(*load_model(args.model), config)
    items = recommend(catalog, history, method=args.method, sampler=sampler, config=config,
                      k=args.k)
    print(json.dumps(items, indent=2))
    return 0

"""``calrec experiment``: ingest, Stage I, Stage II, evaluation and report in one command."""

from __future__ import annotations

import argparse
import logging
import sys

from calrec_core.overrides import PRESETS


def _experiment(args: argparse.Namespace) -> int:
    import yaml

    from calrec_core.data.config import load_roles_config
    from calrec_core.experiment.config import load_experiment

    overrides = list(args.set)
    if args.budget_minutes is not None:
        overrides.append(f"experiment.budget_minutes={args.budget_minutes}")
    if args.variants is not None:
        overrides.append(f"experiment.variants={args.variants}")
    config = load_experiment(args.preset, args.config, overrides)
    if args.roles:
        import dataclasses

        # Validated against the rest (an eval category is needed) by the dataclass itself.
        config = dataclasses.replace(config, roles=load_roles_config(args.roles))
    if args.print_config:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False), end="")
        return 0
    if not args.output:
        print("calrec experiment: --output is required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("calrec_core").setLevel(logging.INFO)
    from calrec_core.experiment.run import run_experiment

    result = run_experiment(config, args.data or [], args.output, ingested_dir=args.ingested,
                            ingest_only=args.ingest_only)
    if args.ingest_only:
        print(f"ingested into {result['data']}")
        return 0
    print(f"wrote {args.output}/report.md, report.html, report.json, report.png")
    return 0


def add_experiment_arguments(parser: argparse.ArgumentParser, default: str) -> None:
    """--preset, --config, --roles and --set: how every command that runs an experiment
    (``calrec experiment``, ``calrec pipeline ...``) builds its ExperimentConfig."""
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="starting point: tiny (seconds, random tiny model), demo (real "
                        f"model, CPU-sized) or paper (§4); default: {default}")
    parser.add_argument("--config", metavar="YAML",
                        help="experiment file with roles/train/eval/experiment sections")
    parser.add_argument("--roles", metavar="YAML",
                        help="category roles file (replaces the preset's or config's roles)")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override one setting, e.g. --set train.alpha=0 "
                        "--set eval.n_gen=8 --set experiment.baselines=lir (repeatable)")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="the paper's recipe on one machine: ingest, Stage I, Stage II, evaluate, report",
        description="Runs (or, rerun with the same settings, resumes) a whole CALRec experiment "
        "and writes OUTPUT/report.md: every trained variant and baseline on the same test "
        "users, paired t-tests against calrec, and a timing table. With --budget-minutes, "
        "steps and test users are sized from measured step and evaluation times.",
    )
    parser.add_argument("--data", action="append", metavar="DIR",
                        help="folder of raw 2018 files (<Category>_5.json.gz, meta_...); "
                        "repeat to combine folders")
    parser.add_argument("--ingested", metavar="DIR",
                        help="reuse this ingested data folder instead of ingesting --data")
    parser.add_argument("--output", help="experiment folder (resumable)")
    add_experiment_arguments(parser, "the config file's, else paper")
    parser.add_argument("--budget-minutes", type=float, metavar="MIN",
                        help="wall-clock budget; 0 keeps the configured step counts")
    parser.add_argument("--variants", metavar="LIST",
                        help="comma-separated trained variants: calrec, no_contrastive, "
                        "no_stage1, no_stage2")
    parser.add_argument("--ingest-only", action="store_true",
                        help="stop after ingestion (OUTPUT/data), e.g. to carry it to a machine "
                        "without Beam and continue there with --ingested")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration as YAML and exit")
    parser.set_defaults(handler=_experiment)

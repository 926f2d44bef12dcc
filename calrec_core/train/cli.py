"""``calrec train`` (Stage I / Stage II) and ``calrec plot-losses``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

from calrec_core.overrides import add_preset_arguments

# The --preset of ``calrec train`` when none is given (the only one --train-config goes with).
DEFAULT_PRESET = "paper"
# What process 0 writes into --output when the stage ends: the summary it prints.
RESULT_FILE = "result.json"


def _config(args: argparse.Namespace):
    """The TrainConfig of --preset or --train-config, with the --set overrides on top."""
    from calrec_core.overrides import replace_typed
    from calrec_core.train.config import TrainConfig

    if not args.train_config:
        return TrainConfig.preset(args.preset).with_overrides(args.set)
    if args.preset != DEFAULT_PRESET:
        raise ValueError(f"--train-config is a whole configuration: it does not go with "
                         f"--preset {args.preset} (use --set to change fields)")
    from calrec_core.storage import path

    source = f"--train-config {args.train_config}"
    try:
        values = json.loads(path(args.train_config).read_text())
    except FileNotFoundError:
        raise ValueError(f"{source}: no such file") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{source}: not JSON ({error})") from None
    return replace_typed(TrainConfig(), values, source).with_overrides(args.set)


def _write_result(output: str, summary: dict) -> None:
    """``<output>/result.json`` from process 0 only (every process of a job gets the same
    summary), so a launcher can read the outcome without the workers' stdout."""
    import jax

    from calrec_core.storage import join, write_atomic

    if jax.process_index() == 0:
        write_atomic(join(output, RESULT_FILE), json.dumps(summary, indent=2) + "\n")


def _train(args: argparse.Namespace) -> int:
    try:
        config = _config(args)
    except ValueError as error:
        print(f"calrec train: {error}", file=sys.stderr)
        return 2
    if args.stage == 2 and not args.category:
        print("calrec train: --stage 2 needs --category", file=sys.stderr)
        return 2
    if args.stage == 1 and (args.category or args.init):
        print("calrec train: --category and --init belong to --stage 2", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("calrec_core").setLevel(logging.INFO)
    # Stages run as separate processes compile the same step; the cache compiles it once.
    from calrec_core.model.compilation_cache import enable_compilation_cache

    enable_compilation_cache(args.compilation_cache)
    from calrec_core.model.loading import use_weights
    from calrec_core.train.distributed import initialize
    from calrec_core.train.stages import run_stage1, run_stage2

    try:
        # Before any JAX computation: on several hosts every process joins the job first.
        initialize(args.coordinator, args.num_processes, args.process_id)
    except ValueError as error:
        print(f"calrec train: {error}", file=sys.stderr)
        return 2

    try:
        use_weights(args.weights)  # read wherever the pretrained weights are loaded
        if args.stage == 1:
            result = run_stage1(args.data, args.output, config)
        else:
            # --init none: the "w/o Stage I" ablation (Stage II from the pretrained weights).
            init = None if args.init in (None, "none") else args.init
            result = run_stage2(args.data, args.category, init, args.output, config)
    except (FileNotFoundError, ValueError) as error:
        print(f"calrec train: {error}", file=sys.stderr)
        return 1
    summary = dataclasses.asdict(result)
    summary["history"] = list(summary["history"])
    _write_result(args.output, summary)
    print(json.dumps(summary, indent=2))
    return 0


def _plot_losses(args: argparse.Namespace) -> int:
    from calrec_core.train.metrics import plot_losses

    try:
        path = plot_losses(args.run_dirs, args.output, args.labels)
    except (ValueError, FileNotFoundError) as error:
        print(f"calrec plot-losses: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    train = subparsers.add_parser(
        "train",
        help="fine-tune CALRec: Stage I (all categories) or Stage II (one category)",
        description="Resumable: rerun the same command to continue from the newest checkpoint "
        "in --output. The selected model is exported to OUTPUT/selected.",
    )
    train.add_argument("--stage", type=int, choices=(1, 2), required=True,
                       help="1: multi-category joint fine-tuning; 2: one category")
    train.add_argument("--data", required=True, help="ingested data folder (calrec ingest)")
    train.add_argument("--output", required=True,
                       help=f"run folder (process 0 writes the summary to {RESULT_FILE} there)")
    add_preset_arguments(train, "train", default=DEFAULT_PRESET)
    train.add_argument("--train-config", metavar="FILE_OR_URI",
                       help="a whole training configuration: JSON of TrainConfig.to_dict(), "
                       "local or gs:// (instead of --preset; --set still applies on top)")
    train.add_argument("--category", help="Stage II: the eval category to fine-tune on")
    train.add_argument("--init", help="Stage II: exported Stage I model folder (OUTPUT/selected "
                       "of Stage I), or 'none' for the pretrained weights")
    train.add_argument("--compilation-cache", metavar="DIR",
                       help="persistent JAX compilation cache shared by runs (optional)")
    hosts = train.add_argument_group(
        "multi-host", "one process per host, all with the same command; Vertex AI jobs and "
        "Cloud TPU slices are detected without these (also CALREC_COORDINATOR, "
        "CALREC_NUM_PROCESSES, CALREC_PROCESS_ID)")
    hosts.add_argument("--coordinator", metavar="HOST:PORT",
                       help="address where process 0 serves the coordination service")
    hosts.add_argument("--num-processes", type=int, help="processes in the job")
    hosts.add_argument("--process-id", type=int, help="this process's index, from 0")
    from calrec_core.model.loading import add_weights_argument

    add_weights_argument(train)
    train.set_defaults(handler=_train)

    plot = subparsers.add_parser("plot-losses", help="plot L_NIG and L_TT curves of runs")
    plot.add_argument("run_dirs", nargs="+", help="run folders (with metrics.jsonl)")
    plot.add_argument("--output", required=True, help="PNG to write")
    plot.add_argument("--labels", nargs="+", help="one legend label per run folder")
    plot.set_defaults(handler=_plot_losses)

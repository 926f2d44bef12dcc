"""``calrec ingest`` (raw Amazon 2018 files -> TFRecords) and ``calrec stats`` (Table 1)."""

from __future__ import annotations

import argparse
import json
import sys


def _ingest(args: argparse.Namespace) -> int:
    from calrec_core.data.config import roles_preset
    from calrec_core.data.ingest import run_ingest
    from calrec_core.data.stats import format_table

    if (args.config is None) == (args.preset is None):
        print("calrec ingest: give exactly one of --config and --preset", file=sys.stderr)
        return 2
    beam_args = list(args.beam_args)
    if beam_args and beam_args[0] == "--":
        beam_args = beam_args[1:]
    config = roles_preset(args.preset) if args.preset else None
    try:
        stats = run_ingest(args.input, args.config, args.output, beam_args, config=config)
    except (FileNotFoundError, ValueError) as error:
        print(f"calrec ingest: {error}", file=sys.stderr)
        return 1
    print(format_table(stats))
    print(f"wrote {args.output}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from calrec_core.data.reader import load_stats
    from calrec_core.data.stats import format_table

    try:
        stats = load_stats(args.data_dir)
    except FileNotFoundError as error:
        print(f"calrec stats: {error}", file=sys.stderr)
        return 1
    print(json.dumps(stats, indent=2, sort_keys=True) if args.json else format_table(stats))
    if args.plot:
        from calrec_core.data.plots import plot_sequence_lengths

        plot_sequence_lengths(stats, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def register(subparsers) -> None:
    ingest = subparsers.add_parser(
        "ingest",
        help="raw Amazon Review 2018 files -> per-user TFRecords, corpus and stats (Beam)",
        description="Everything after `--` is passed to Beam, e.g. -- --direct_num_workers=2 "
        "--direct_running_mode=multi_processing",
    )
    ingest.add_argument("--input", required=True, help="folder with <Category>_5.json[.gz] files")
    ingest.add_argument("--config", help="category roles YAML (see configs/sample.yaml)")
    ingest.add_argument("--preset", help="a named roles preset instead of --config (tiny, "
                        "demo, paper)")
    ingest.add_argument("--output", required=True, help="output folder")
    ingest.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam pipeline options")
    ingest.set_defaults(handler=_ingest)

    stats = subparsers.add_parser("stats", help="print the ingestion statistics (Table 1)")
    stats.add_argument("data_dir", help="an ingest output folder")
    stats.add_argument("--json", action="store_true", help="print stats.json instead")
    stats.add_argument("--plot", metavar="PNG", help="also draw users by sequence length")
    stats.set_defaults(handler=_stats)

"""``calrec ingest`` (raw Amazon 2018 files -> TFRecords) and ``calrec stats`` (Table 1).

Expected failures raise; ``calrec_core.cli`` prints them as one line and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import sys

from calrec_core.overrides import PRESETS


def _ingest(args: argparse.Namespace) -> int:
    from calrec_core.data.config import load_roles_config, roles_preset
    from calrec_core.data.ingest import run_ingest
    from calrec_core.data.stats import format_table
    from calrec_core.overrides import apply_section_overrides

    if (args.roles is None) == (args.preset is None):
        print("calrec ingest: give exactly one of --roles and --preset", file=sys.stderr)
        return 2
    beam_args = list(args.beam_args)
    if beam_args and beam_args[0] == "--":
        beam_args = beam_args[1:]
    config = roles_preset(args.preset) if args.preset else load_roles_config(args.roles)
    config = apply_section_overrides(config, args.set, "roles")
    stats = run_ingest(args.data, None, args.output, beam_args, config=config,
                       allow_empty_categories=args.allow_empty_categories)
    print(format_table(stats))
    print(f"wrote {args.output}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from calrec_core.data.reader import load_stats
    from calrec_core.data.stats import format_table

    data_dir = args.data or args.data_dir
    if data_dir is None:
        print("calrec stats: give the ingested data folder (--data DIR)", file=sys.stderr)
        return 2
    stats = load_stats(data_dir)
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
        "--direct_running_mode=multi_processing, or for Dataflow (gs:// --data and --output): "
        "-- --runner DataflowRunner --project P --region R --temp_location gs://BUCKET/tmp "
        "--sdk_container_image REGISTRY/calrec-ingest:TAG (default: $CALREC_INGEST_IMAGE); "
        "the command waits for the job.",
    )
    ingest.add_argument("--data", "--input", dest="data", required=True,
                        help="folder with the raw <Category>_5.json[.gz] (and meta_) files")
    ingest.add_argument("--roles", "--config", dest="roles",
                        help="category roles YAML (see configs/sample.yaml)")
    ingest.add_argument("--preset", choices=PRESETS,
                        help="a named roles preset instead of --roles")
    ingest.add_argument("--set", action="append", default=[], metavar="roles.FIELD=VALUE",
                        help="override a roles setting: seed, mixture_exponent or "
                        "records_per_shard, e.g. --set roles.seed=1")
    ingest.add_argument("--output", required=True, help="output folder")
    ingest.add_argument("--allow-empty-categories", action="store_true",
                        help="succeed even when a category ends with no users (default: fail)")
    ingest.add_argument("beam_args", nargs=argparse.REMAINDER, help="Beam pipeline options")
    ingest.set_defaults(handler=_ingest)

    stats = subparsers.add_parser("stats", help="print the ingestion statistics (Table 1)")
    stats.add_argument("data_dir", nargs="?", help="an ingest output folder (or --data)")
    stats.add_argument("--data", help="an ingest output folder")
    stats.add_argument("--json", action="store_true", help="print stats.json instead")
    stats.add_argument("--plot", metavar="PNG", help="also draw users by sequence length")
    stats.set_defaults(handler=_stats)

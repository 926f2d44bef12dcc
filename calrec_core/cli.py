"""The single ``calrec`` command line; each area registers its own subcommands.

Areas keep their argument parsing beside their code (``calrec_core/<area>/cli.py`` with a
``register(subparsers)`` function) so this file only lists them. Subcommands import their
heavy dependencies (JAX, Beam, KFP) lazily, inside the handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that define ``register(subparsers)``; missing optional extras are reported
# when the subcommand runs, not when the CLI starts.
_AREAS = (
    "calrec_core.data.cli",
    "calrec_core.model.cli",
    "calrec_core.train.cli",
    "calrec_core.eval.cli",
    "pipelines.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calrec",
        description="CALRec: contrastive LLM alignment for sequential recommendation.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in _AREAS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            # Only tolerate the area itself being absent (a partial install), never a
            # broken import inside an area.
            if error.name and module_name.startswith(error.name):
                continue
            raise
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The single ``calrec`` command line; each area registers its own subcommands.

Areas keep their argument parsing beside their code (``calrec_core/<area>/cli.py`` with a
``register(subparsers)`` function) so this file only lists them. Subcommands import their
heavy dependencies (JAX, Beam, KFP) lazily, inside the handler.

Errors are handled here, once: an expected failure (``CalrecError``, a bad value, a missing or
unreadable file) becomes one line on stderr and exit status 1; ``--traceback`` shows the
traceback instead, for debugging. Other libraries' log records are held back while a command
runs and dropped on an expected failure (``calrec_core.cli_logs``), so a library's own report
of the same error (Beam logs a failing step's stack) does not bury the one line.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from calrec_core.cli_logs import command_logs
from calrec_core.errors import CalrecError

# Modules that define ``register(subparsers)``; missing optional extras are reported
# when the subcommand runs, not when the CLI starts.
_AREAS = (
    "calrec_core.data.cli",
    "calrec_core.model.cli",
    "calrec_core.train.cli",
    "calrec_core.eval.cli",
    "calrec_core.experiment.cli",
    "pipelines.cli",
)
# Failures a person can fix from the message alone (wrong path, bad value, corrupt file).
EXPECTED_ERRORS = (CalrecError, ValueError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="calrec",
        description="CALRec: contrastive LLM alignment for sequential recommendation.",
    )
    parser.add_argument("--traceback", action="store_true",
                        help="show the full traceback of a failure instead of one line")
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


def error_line(error: BaseException) -> str:
    """The error's message on one line (its first line; the type name if it has none)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    message = lines[0] if lines else type(error).__name__
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return message


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with command_logs(hold=not args.traceback, command=args.command) as logs:
        try:
            code = int(args.handler(args) or 0)
        except EXPECTED_ERRORS as error:
            if args.traceback:
                raise
            logs.drop()
            print(f"calrec {args.command}: {error_line(error)}", file=sys.stderr)
            return 1
        if code:  # the handler reported an expected failure itself
            logs.drop()
        return code


if __name__ == "__main__":
    sys.exit(main())

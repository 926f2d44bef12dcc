"""What the ``calrec`` command shows of other libraries' logging.

Libraries log on their own: Beam logs a failing step's exception with its stack before the
error reaches calrec, and importing Beam warns about BigQuery client libraries nobody asked
for. While a command runs, records of third-party loggers (WARNING and above) are held back:
released when the command succeeds or fails unexpectedly, dropped when it fails with an
expected error (which the command reports in one line). Known noise is always dropped.
Records of calrec's own packages are written at once. ``--traceback`` writes everything at
once (nothing held, nothing dropped).

For ``calrec ingest``, what bypasses Python's logging is held the same way when the command
owns the real stderr: file descriptor 2, which child processes (Beam's multi-process workers
log their own stacks) and native libraries write to, goes to a temporary file, while Python's
``sys.stderr`` (calrec's messages) keeps writing to the terminal at once. Other commands leave
it alone: their child processes (a local pipeline's steps) report progress there.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
from collections.abc import Iterator

# Packages whose records are calrec's own (written at once).
OWN_LOGGERS = ("calrec_core", "components", "pipelines", "__main__")
# Messages that say nothing to a calrec user.
NOISE = ("apitools not found, and bigquery client libraries are not available",)
FORMAT = "%(levelname)s:%(name)s:%(message)s"  # logging.basicConfig's
# Commands whose file descriptor 2 is held (see above).
HOLD_DESCRIPTOR_COMMANDS = ("ingest",)
# At most this many records are held; beyond it they are written (a long run's memory).
MAX_HELD = 1000


def _own(record: logging.LogRecord) -> bool:
    return any(record.name == name or record.name.startswith(name + ".")
               for name in OWN_LOGGERS)


class HeldLogs(logging.Handler):
    """A stderr handler for the root logger that holds third-party records back."""

    def __init__(self, hold: bool) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter(FORMAT))
        self._hold = hold
        self._held: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if self._hold and not _own(record):
            if record.levelno >= logging.WARNING and not any(
                    noise in record.getMessage() for noise in NOISE):
                self._held.append(record)
                if len(self._held) > MAX_HELD:
                    self.show_held()
            return
        self._write(record)

    def _write(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")  # looked up now: tests swap it
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging never fails the command
            self.handleError(record)

    def show_held(self) -> None:
        """Writes the held records (the command succeeded or failed unexpectedly)."""
        held, self._held = self._held, []
        for record in held:
            self._write(record)

    def drop_held(self) -> None:
        """Drops the held records (the command failed with an expected, reported error)."""
        self._held = []


@contextlib.contextmanager
def _held_descriptor(hold: bool) -> Iterator[list[bool]]:
    """Points file descriptor 2 at a temporary file for the block (``sys.stderr`` keeps the
    terminal); its text is written out at the end unless ``dropped[0]`` was set. Only for a
    process whose ``sys.stderr`` is the real one (not under a test's capture)."""
    dropped = [False]
    if not hold or sys.stderr is not sys.__stderr__:
        yield dropped
        return
    try:
        descriptor = sys.__stderr__.fileno()
    except (AttributeError, OSError, ValueError):
        yield dropped
        return
    sys.stderr.flush()
    terminal = os.dup(descriptor)
    original = sys.stderr
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), descriptor)
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(terminal), "wb", buffering=0),
                                      encoding=original.encoding, errors="backslashreplace",
                                      line_buffering=True)
        try:
            yield dropped
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = original
            os.dup2(terminal, descriptor)
            os.close(terminal)
            if not dropped[0]:
                capture.seek(0)
                with os.fdopen(os.dup(descriptor), "wb") as out:
                    for line in capture:
                        if not any(noise.encode() in line for noise in NOISE):
                            out.write(line)


class CommandLogs:
    """What ``command_logs`` yields: ``drop()`` after an expected, reported failure."""

    def __init__(self, handler: HeldLogs, dropped: list[bool]) -> None:
        self._handler = handler
        self._dropped = dropped

    def drop(self) -> None:
        self._handler.drop_held()
        self._dropped[0] = True


@contextlib.contextmanager
def command_logs(hold: bool, command: str = "") -> Iterator[CommandLogs]:
    """Holds third-party output back for one command (see the module doc); what is still held
    is written out when the block ends, unless ``drop()`` was called. With a handler on the
    root logger, a library's first ``logging.warning`` no longer installs its own. Where the
    root logger already has handlers (a host program's, a test runner's), logging is theirs
    and left alone."""
    handler = HeldLogs(hold)
    root = logging.getLogger()
    ours = not root.handlers
    with _held_descriptor(hold and command in HOLD_DESCRIPTOR_COMMANDS) as dropped:
        if ours:
            root.addHandler(handler)
        try:
            yield CommandLogs(handler, dropped)
        finally:
            if ours:
                root.removeHandler(handler)
                handler.show_held()

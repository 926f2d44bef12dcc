"""The project's error type for expected failures a person can fix.

Bad input, a wrong path, a stale or foreign output folder: library code raises ``CalrecError``
(or a subclass) with a message that names the file, folder or value at fault, and the ``calrec``
command prints it as one line on stderr with a non-zero exit instead of a traceback.
"""

from __future__ import annotations


class CalrecError(Exception):
    """An expected failure; the message alone tells the user what to fix."""


class InputError(CalrecError):
    """An input file cannot be read as a whole (e.g. a truncated compressed stream)."""


class StaleOutputError(CalrecError, ValueError):
    """An output folder holds results computed from other inputs or settings."""

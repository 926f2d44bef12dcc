"""One writer per output folder: ingest, training, evaluation and experiment runs lock theirs.

Two runs writing one folder interleave their files (a metrics log with every record twice, an
export of one run beside the other's checkpoints), so the second is refused in one line while
the first runs. The lock is ``flock`` on ``<folder>/.calrec.lock``, which says who holds it and
is removed when the run ends: the kernel releases the lock when its process ends, however it
ends, so a killed run never leaves the folder locked (only, at most, the unlocked file). A
process may lock a folder it already holds (nested calls).
Cloud Storage has no such lock: a ``gs://`` folder is not locked (one writer is the caller's
job there, e.g. one pipeline step per folder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import socket
from collections.abc import Iterator

from calrec_core import storage
from calrec_core.errors import CalrecError

LOCK_FILE = ".calrec.lock"
_held: set[str] = set()  # folders this process holds


class FolderInUseError(CalrecError):
    """Another running process writes the folder."""


def _check_folder(directory: str) -> None:
    """Refuses an output that is a file or lies below one (names the file)."""
    if os.path.exists(directory) and not os.path.isdir(directory):
        raise CalrecError(f"output {directory} is a file, not a folder")
    parent = os.path.dirname(directory)
    while parent and not os.path.exists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise CalrecError(f"output {directory}: {parent} is a file, not a folder")


@contextlib.contextmanager
def folder_lock(folder, what: str, enabled: bool = True) -> Iterator[None]:
    """Holds ``folder`` (created if needed) for the block; raises ``FolderInUseError`` when
    another live process holds it. ``what`` names this run in the lock file."""
    if not enabled or storage.is_remote(folder):
        yield
        return
    directory = os.fspath(storage.path(folder))
    if directory in _held:
        yield
        return
    _check_folder(directory)
    os.makedirs(directory, exist_ok=True)
    lock_path = os.path.join(directory, LOCK_FILE)
    descriptor = _acquire(lock_path, directory)
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"calrec {what}, pid {os.getpid()} on {socket.gethostname()}\n"
                 .encode())
        _held.add(directory)
        try:
            yield
        finally:
            _held.discard(directory)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(lock_path)  # while still locked: see _acquire
    finally:
        os.close(descriptor)  # releases the lock


def _acquire(lock_path: str, directory: str) -> int:
    """An open, flock-ed descriptor of the lock file that is still the one at ``lock_path``
    (a holder removes it on release; a lock won on a removed file would guard nothing)."""
    while True:
        descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = os.read(descriptor, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(descriptor)
            if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise
            raise FolderInUseError(f"{directory} is in use by another calrec run ({holder}); "
                                   "wait for it to end or use another folder") from None
        try:
            same = os.path.samestat(os.fstat(descriptor), os.stat(lock_path))
        except FileNotFoundError:
            same = False
        if same:
            return descriptor
        os.close(descriptor)


def locks_folder(parameter: str, what: str):
    """Decorator: the call holds the folder passed as ``parameter`` (see ``folder_lock``)."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            folder = signature.bind(*args, **kwargs).arguments[parameter]
            with folder_lock(folder, what):
                return function(*args, **kwargs)

        return wrapper

    return decorate

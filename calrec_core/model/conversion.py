"""Converting a checkpoint into the weights cache in a child process.

Reading a GGUF's metadata with the gguf package makes about 0.7 GB of small Python objects,
and building the tokenizer more; a process keeps much of such freed heap mapped. Converting in
a child keeps all of it out of the process that then loads the weights (and may train for
hours): that process's peak is the one of a load from the cache, and the child's own stays
under the size of the float32 model (benchmarks/bench_load.py reports both).

The child writes a private folder beside the cache, which the parent renames into place once
the child has written every file: a conversion killed at any moment leaves no cache folder
that loads (the next start converts again and removes what a dead one left), and two
conversions of one checkpoint at once leave one complete copy.

    python -c '<bootstrap>' CALREC_ROOT PARENT_PID SOURCE FOLDER   (what the parent runs)
"""

from __future__ import annotations

import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys

from calrec_core.errors import CalrecError
from calrec_core.model.loading import _DONE, convert

_PARTIAL = ".partial-"  # ".<cache name>.partial-<parent pid>-<random>": a conversion's folder
# Runs main() from the parent's own calrec_core, whatever the child's sys.path would find.
_BOOTSTRAP = ("import sys; sys.path.insert(0, sys.argv[1]); "
              "from calrec_core.model.conversion import main; sys.exit(main(sys.argv[2:]))")


def convert_in_child(source: pathlib.Path, cache: pathlib.Path) -> None:
    """Converts ``source`` (a .gguf file or HF directory) into the ``cache`` folder in a child
    process; a failure of the child is raised here as one ``CalrecError`` line."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(cache)
    partial = cache.parent / f".{cache.name}{_PARTIAL}{os.getpid()}-{secrets.token_hex(4)}"
    partial.mkdir()  # the mode a folder made in place gets (mkdtemp's would be 0700)
    root = pathlib.Path(__file__).resolve().parents[2]  # the folder holding calrec_core
    try:
        # stderr is the parent's (the progress bar); stdout carries the child's error line.
        done = subprocess.run(
            [sys.executable, "-c", _BOOTSTRAP, str(root), str(os.getpid()), os.fspath(source),
             os.fspath(partial)],
            stdout=subprocess.PIPE, text=True, check=False)
        if done.returncode != 0:
            raise CalrecError(f"converting the weights {source} failed: "
                              f"{_failure(done.returncode, done.stdout)}")
        _publish(partial, cache)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _failure(returncode: int, stdout: str) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the conversion process was killed ({name}); nothing was cached"
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    return lines[-1] if lines else f"the conversion process exited with code {returncode}"


def _publish(partial: pathlib.Path, cache: pathlib.Path) -> None:
    """Renames the complete ``partial`` folder to ``cache`` (atomic on one file system)."""
    try:
        os.rename(partial, cache)
    except OSError:
        if (cache / _DONE).exists():
            return  # a conversion of the same checkpoint finished first: keep its copy
        # A folder without its completion mark: an older release's conversion, killed while
        # it wrote in place.
        shutil.rmtree(cache)
        os.rename(partial, cache)


def _remove_abandoned(cache: pathlib.Path) -> None:
    """Removes the folders of conversions of this checkpoint whose parent process is gone
    (killed before it could remove them)."""
    prefix = f".{cache.name}{_PARTIAL}"
    for folder in cache.parent.glob(f"{prefix}*"):
        pid = folder.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _die_with_parent(parent: int) -> None:
    """On Linux, asks the kernel to kill this child when its parent dies, so that a killed
    parent's conversion stops at once (its folder is never published; the next conversion
    removes it). Elsewhere the orphan finishes into a folder nobody publishes."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        return
    if os.getppid() != parent:  # the parent died before prctl
        os.kill(os.getpid(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    """The child: ``PARENT_PID SOURCE FOLDER``; an error is printed as one line on stdout."""
    try:
        _die_with_parent(int(argv[0]))
        convert(pathlib.Path(argv[1]), pathlib.Path(argv[2]))
    except KeyboardInterrupt:  # Ctrl-C reaches the parent too, which reports it
        return 130
    except Exception as error:  # noqa: BLE001 - every failure is reported in one line
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        print(f"{type(error).__name__}: {lines[0] if lines else 'no message'}", flush=True)
        return 1
    return 0

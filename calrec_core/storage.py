"""One file-system layer for every path calrec reads or writes outside Beam: local or gs://.

Everything goes through ``etils.epath`` (the layer Orbax itself uses, so checkpoints and
exports reach ``gs://`` natively), whose ``gs://`` backend is gcsfs. A ``Path`` here behaves
like ``pathlib.Path`` for both kinds of location; the few libraries that insist on a local
file (GGUF memory maps, tokenizers, matplotlib) get one through ``local_file``/``local_dir``.
Beam pipelines keep Beam's own FileSystems, which its sinks need; both honour the same
``STORAGE_EMULATOR_HOST`` for a local Cloud Storage stand-in.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import shutil
import tempfile
import typing
from collections.abc import Iterator

from etils import epath

Path = epath.Path
PathLike = str | os.PathLike
REMOTE_SCHEMES = ("gs://",)


def is_remote(location: PathLike) -> bool:
    """True for a Cloud Storage URI (``gs://bucket/...``)."""
    return os.fspath(location).startswith(REMOTE_SCHEMES)


def path(location: PathLike) -> epath.Path:
    """``location`` as a Path (local paths made absolute, so every log names one place)."""
    text = os.fspath(location)
    if not text:
        raise ValueError("empty path or URI")
    return epath.Path(text) if is_remote(text) else epath.Path(os.path.abspath(text))


def join(location: PathLike, *parts: str) -> str:
    """``location/part/...`` as a string, for either kind of location."""
    return os.fspath(path(location).joinpath(*parts))


# Remote reads are buffered in blocks this large: gcsfs would send one ranged request per
# small read (a record header, a parquet footer) otherwise.
READ_BUFFER_BYTES = 8 << 20


def open_read(location: PathLike) -> typing.BinaryIO:
    """``location`` opened for reading bytes, seekable, buffered for small reads."""
    file = path(location).open("rb")
    return io.BufferedReader(file, buffer_size=READ_BUFFER_BYTES) if is_remote(location) else file


def files_under(directory: PathLike) -> list[epath.Path]:
    """Every file below ``directory``, sorted (a walk: GCS has no recursive glob)."""
    root = path(directory)
    found = []
    for folder, _, names in root.walk():
        folder = os.fspath(folder)
        # gcsfs walks with bare "bucket/..." names.
        if is_remote(root) and not is_remote(folder):
            folder = "gs://" + folder
        found.extend(epath.Path(folder) / name for name in names)
    return sorted(found, key=os.fspath)


def copy_tree(source: PathLike, destination: PathLike) -> None:
    """Copies the files below ``source`` to the same relative places below ``destination``."""
    source, destination = path(source), path(destination)
    if not source.is_dir():
        raise FileNotFoundError(f"no folder {source}")
    for file in files_under(source):
        target = destination / os.path.relpath(os.fspath(file), os.fspath(source))
        target.parent.mkdir(parents=True, exist_ok=True)
        file.copy(target, overwrite=True)


def remove_tree(location: PathLike) -> None:
    """Deletes the folder ``location`` and everything below it (nothing if it is absent)."""
    folder = path(location)
    if folder.exists():
        folder.rmtree()


def write_atomic(location: PathLike, data: bytes | str) -> None:
    """Writes the whole of ``data`` so a reader never sees a partial file: a local file is
    replaced by rename; a Cloud Storage object is created in one upload."""
    target = path(location)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    if is_remote(target):
        target.write_bytes(payload)
        return
    staging = target.with_name(f".{target.name}.partial")
    staging.write_bytes(payload)
    os.replace(staging, target)


@contextlib.contextmanager
def local_file(location: PathLike) -> Iterator[pathlib.Path]:
    """A local path holding ``location``'s bytes: the file itself, or a downloaded copy that
    is deleted afterwards."""
    if not is_remote(location):
        yield pathlib.Path(path(location))
        return
    remote = path(location)
    with tempfile.TemporaryDirectory(prefix="calrec-") as scratch:
        copy = pathlib.Path(scratch) / remote.name
        with open_read(remote) as source, open(copy, "wb") as target:
            shutil.copyfileobj(source, target, length=16 << 20)
        yield copy


@contextlib.contextmanager
def local_dir(location: PathLike) -> Iterator[pathlib.Path]:
    """A local folder with ``location``'s files: the folder itself, or a downloaded copy that
    is deleted afterwards."""
    if not is_remote(location):
        yield pathlib.Path(path(location))
        return
    with tempfile.TemporaryDirectory(prefix="calrec-") as scratch:
        copy = pathlib.Path(scratch) / path(location).name
        copy_tree(location, copy)
        yield copy


@contextlib.contextmanager
def staged_output(location: PathLike) -> Iterator[pathlib.Path]:
    """A local folder for a library that writes only local files; its files are copied to
    ``location`` when the block ends without an error (local: the folder itself)."""
    if not is_remote(location):
        folder = pathlib.Path(path(location))
        folder.mkdir(parents=True, exist_ok=True)
        yield folder
        return
    with tempfile.TemporaryDirectory(prefix="calrec-") as scratch:
        yield pathlib.Path(scratch)
        copy_tree(scratch, location)

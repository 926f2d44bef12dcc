"""Content fingerprints: short hashes that change whenever an input's content changes.

Resumable outputs (evaluation shards, training runs, exported models) record the fingerprints
of what they were computed from, and refuse to continue from a folder whose record differs, so
a changed corpus, split or model never silently reuses stale results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from calrec_core import storage

_CHUNK = 1 << 20


def _hasher():
    return hashlib.blake2b(digest_size=16)


def file_digest(path) -> str:
    """Hex digest of one file's bytes (local or gs://)."""
    digest = _hasher()
    with storage.open_read(path) as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def files_digest(paths: Iterable, root=None) -> str:
    """Digest of several files: their names (relative to ``root``) and contents, in name order."""
    entries = []
    for path in map(storage.path, paths):
        name = (os.path.relpath(os.fspath(path), os.fspath(storage.path(root)))
                if root is not None else path.name)
        entries.append((name.replace(os.sep, "/"), file_digest(path)))
    return json_digest(sorted(entries))


def tree_digest(directory) -> str:
    """Digest of every file under ``directory`` (names relative to it)."""
    return files_digest(storage.files_under(directory), root=directory)


def json_digest(value) -> str:
    """Digest of a JSON-serialisable value (keys sorted, so dict order does not matter)."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def arrays_digest(tree) -> str:
    """Digest of a pytree of arrays: each leaf's path, dtype, shape and bytes, in path order.

    Equal parameters give equal digests however they are sharded or where they live.
    """
    import jax
    import numpy as np

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    digest = _hasher()
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        if isinstance(leaf, jax.Array) and not leaf.is_fully_addressable:
            from jax.experimental import multihost_utils

            leaf = multihost_utils.process_allgather(leaf, tiled=True)
        array = np.ascontiguousarray(np.asarray(jax.device_get(leaf)))
        digest.update(jax.tree_util.keystr(path).encode("utf-8"))
        digest.update(f"{array.dtype.str}{array.shape}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()

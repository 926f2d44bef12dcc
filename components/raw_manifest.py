"""Versions of the raw data from their content: a SHA-256 over a manifest of the files.

The manifest lists every file under the raw-data URI with its relative name, size and a
content digest: for a local folder the SHA-256 of the bytes, for ``gs://`` the object's MD5
as Cloud Storage reports it (objects without one, composed objects, contribute their CRC32C
and generation). Re-uploading identical bytes keeps the version; any changed, added,
removed or renamed file gives a new one. The ingest step's cache is keyed on it.
"""

from __future__ import annotations

import hashlib
import pathlib

_GCS = "gs://"


def local_manifest(folder) -> list[tuple[str, int, str]]:
    """(relative name, size, sha256 of the bytes) of every file under ``folder``, sorted."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"raw data folder {folder} does not exist")
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        entries.append((path.relative_to(folder).as_posix(), path.stat().st_size,
                        "sha256:" + digest.hexdigest()))
    return entries


def gcs_manifest(uri: str, client=None) -> list[tuple[str, int, str]]:
    """(relative name, size, content digest) of every object under the ``gs://`` prefix.

    Reads object metadata only (one listing), never the bytes. ``client``: a
    ``google.cloud.storage.Client`` (default: one for the application-default credentials).
    """
    if not uri.startswith(_GCS):
        raise ValueError(f"{uri!r} is not a gs:// URI")
    bucket, _, prefix = uri[len(_GCS):].partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} names no bucket")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    if client is None:
        from google.cloud import storage

        client = storage.Client()
    entries = []
    for blob in client.list_blobs(bucket, prefix=prefix):
        if blob.name.endswith("/"):  # folder placeholders hold no data
            continue
        digest = (f"md5:{blob.md5_hash}" if blob.md5_hash
                  else f"crc32c:{blob.crc32c}:generation:{blob.generation}")
        entries.append((blob.name[len(prefix):], int(blob.size or 0), digest))
    if not entries:
        raise FileNotFoundError(f"no objects under {uri}")
    return sorted(entries)


def manifest(uri, client=None) -> list[tuple[str, int, str]]:
    """The manifest of a local folder or a ``gs://`` prefix (see the module docstring)."""
    uri = str(uri)
    return gcs_manifest(uri, client) if uri.startswith(_GCS) else local_manifest(uri)


def data_version(uri, client=None) -> str:
    """``sha256:<hex>`` of the manifest of ``uri``: equal exactly when the files are."""
    digest = hashlib.sha256()
    for name, size, content in manifest(uri, client):
        digest.update(f"{name}\0{size}\0{content}\n".encode())
    return "sha256:" + digest.hexdigest()

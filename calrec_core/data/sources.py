"""Finds each configured category's raw files and checks them before any work starts.

Files are named as published: ``<Category>_5.json[.gz]`` (5-core reviews, required) and
``meta_<Category>.json[.gz]`` (metadata, optional: without it every item is 'Unknown').
Paths go through Beam's FileSystems so ``gs://`` folders work like local ones.
"""

from __future__ import annotations

import dataclasses
import gzip

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from calrec_core.data.config import RolesConfig


@dataclasses.dataclass(frozen=True)
class CategorySource:
    """One category's role and raw files."""

    name: str  # Category file stem, e.g. "Gift_Cards".
    role: str  # pretrain | validation | eval.
    user_sample_rate: float  # Share of users kept, in (0, 1].
    min_events: int  # Fewest deduplicated events a user needs for the role.
    splits: tuple[str, ...]  # Splits the role writes.
    reviews_path: str  # <Category>_5.json[.gz].
    meta_path: str | None  # meta_<Category>.json[.gz], or None when not published/at hand.


def _exists(path: str) -> bool:
    return FileSystems.exists(path)


def _folder_exists(path: str) -> bool:
    """A local folder exists; a gs:// "folder" is only a prefix, there when it holds a file."""
    if "://" not in path:
        return _exists(path)
    pattern = FileSystems.join(path.rstrip("/"), "*")
    return any(result.metadata_list for result in FileSystems.match([pattern], limits=[1]))


def open_lines(path: str):
    """A binary line stream over a plain or gzip file (decided by the .gz suffix)."""
    stream = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
    return gzip.GzipFile(fileobj=stream, mode="rb") if path.endswith(".gz") else stream


def _check_not_empty(path: str) -> None:
    try:
        with open_lines(path) as stream:
            first = stream.read(1)
    except (OSError, EOFError) as error:
        raise ValueError(f"{path}: cannot be read ({error})") from None
    if not first:
        raise ValueError(f"{path}: file is empty")


def _find(input_dir: str, stem: str, required: bool) -> str | None:
    candidates = [FileSystems.join(input_dir, f"{stem}.json{suffix}") for suffix in (".gz", "")]
    found = [path for path in candidates if _exists(path)]
    if len(found) > 1:
        raise ValueError(f"both {found[0]} and {found[1]} exist; keep one of them")
    if not found and required:
        raise FileNotFoundError(f"no review file for this category: expected {candidates[0]} "
                                f"or {candidates[1]}")
    return found[0] if found else None


def resolve_sources(input_dir: str, config: RolesConfig) -> list[CategorySource]:
    """Every category's files, or a clear error naming the missing/empty/ambiguous file."""
    if not _folder_exists(input_dir):
        raise FileNotFoundError(f"input folder {input_dir} does not exist")
    sources = []
    for category in config.categories:
        reviews = _find(input_dir, f"{category.name}_5", required=True)
        meta = _find(input_dir, f"meta_{category.name}", required=False)
        for path in (reviews, meta):
            if path is not None:
                _check_not_empty(path)
        sources.append(CategorySource(
            name=category.name,
            role=category.role,
            user_sample_rate=float(category.user_sample_rate),
            min_events=category.min_events,
            splits=category.splits,
            reviews_path=reviews,
            meta_path=meta,
        ))
    return sources

"""Reads what ``calrec ingest`` wrote: examples, item corpus, mixture and statistics.

Only the standard library, protobuf and (for the corpus) pandas/pyarrow are needed, so the
training and evaluation images read the data without Apache Beam. Every reader refuses a folder
that an unfinished or failed ingest marked ``INCOMPLETE``, and a category that the folder's
``stats.json`` does not list (files of a category an earlier ingest wrote are never its data).
"""

from __future__ import annotations

import json

from calrec_core.data.records import SHARD_PATTERN, SPLITS, decode_tf_example, iter_records
from calrec_core.errors import CalrecError
from calrec_core.storage import Path, open_read, path

STATS_FILE = "stats.json"
MIXTURE_FILE = "mixture.json"
CORPUS_FILE = "corpus.parquet"
CORPUS_COLUMNS = ("asin", "title", "category", "brand", "price", "text")
INCOMPLETE_FILE = "INCOMPLETE"  # present while an ingest runs and after one that failed


def check_complete(data_dir) -> None:
    """Raises when ``data_dir`` holds the output of an ingest that did not finish."""
    marker = path(data_dir) / INCOMPLETE_FILE
    if marker.is_file():
        reason = marker.read_bytes().decode("utf-8", errors="replace").strip()
        raise CalrecError(f"{data_dir} holds an incomplete ingest ({reason}); "
                          "rerun calrec ingest into it")


def check_category(data_dir, category: str) -> None:
    """Raises unless ``data_dir`` is complete and (where it has ``stats.json``, as every ingest
    writes) its last ingest produced ``category``."""
    check_complete(data_dir)
    if not (path(data_dir) / STATS_FILE).is_file():
        return  # a folder laid out by hand (tests, tools): nothing to check against
    categories = load_stats(data_dir).get("categories") or {}
    if category not in categories:
        raise CalrecError(f"{data_dir} holds no category {category!r}: its last ingest "
                          f"produced {sorted(categories)}")


def shard_paths(data_dir, category: str, split: str) -> list[Path]:
    """The complete, ordered shard list of one split; raises when shards are missing."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    check_category(data_dir, category)
    folder = path(data_dir) / category
    if not folder.is_dir():
        raise FileNotFoundError(f"no ingested category folder {folder}")
    shards = {}
    for shard in folder.glob(f"{split}-*.tfrecord"):
        match = SHARD_PATTERN.match(shard.name)
        if match and match["split"] == split:
            shards[shard.name] = (int(match["index"]), int(match["count"]), shard)
    if not shards:
        raise FileNotFoundError(f"no {split} shards in {folder}")
    counts = {count for _, count, _ in shards.values()}
    indices = sorted(index for index, _, _ in shards.values())
    if len(counts) != 1 or indices != list(range(counts.pop())):
        raise ValueError(f"incomplete or mixed {split} shard set in {folder}: {sorted(shards)}")
    return [shard for _, _, shard in sorted(shards.values(), key=lambda entry: entry[:2])]


def iter_split(data_dir, category: str, split: str):
    """Yields decoded examples shard by shard (file order, not sorted)."""
    for shard in shard_paths(data_dir, category, split):
        with open_read(shard) as stream:
            for record in iter_records(stream):
                yield decode_tf_example(record)


def read_examples(data_dir, category: str, split: str) -> list[dict]:
    """All examples of one category/split, sorted by user_id (deterministic)."""
    return sorted(iter_split(data_dir, category, split), key=lambda example: example["user_id"])


def has_split(data_dir, category: str, split: str) -> bool:
    return any((path(data_dir) / category).glob(f"{split}-*-of-*.tfrecord"))


def load_corpus(data_dir, category: str):
    """The category's item corpus as a DataFrame (asin, title, category, brand, price, text)."""
    import pandas as pd

    check_category(data_dir, category)
    corpus = path(data_dir) / category / CORPUS_FILE
    if not corpus.is_file():
        raise FileNotFoundError(f"no corpus at {corpus}")
    with open_read(corpus) as stream:
        return pd.read_parquet(stream).reset_index(drop=True)


def _load_json(file: Path) -> dict:
    check_complete(file.parent)
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found; run `calrec ingest` first")
    try:
        document = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalrecError(f"{file} is corrupt ({error}); rerun calrec ingest") from None
    if not isinstance(document, dict):
        raise CalrecError(f"{file} is corrupt (not a JSON object); rerun calrec ingest")
    return document


def load_mixture(data_dir) -> dict:
    """``{"exponent": 0.3, "weights": {cat: w}, "users": {cat: n}}`` for Stage I sampling."""
    return _load_json(path(data_dir) / MIXTURE_FILE)


def load_stats(data_dir) -> dict:
    """The ingestion statistics (see ``calrec_core.data.stats``)."""
    return _load_json(path(data_dir) / STATS_FILE)

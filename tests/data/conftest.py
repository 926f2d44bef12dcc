"""Helpers for data tests: write small raw files in the published Amazon 2018 layout."""

from __future__ import annotations

import gzip
import json
import pathlib

import pytest


def review(user, asin, time, text="ok", rating=5.0, **extra) -> dict:
    row = {"reviewerID": user, "asin": asin, "unixReviewTime": time, "reviewText": text,
           "overall": rating}
    row.update(extra)
    return row


def meta(asin, title, main_cat="Books", brand="Acme", price="$1.00", **extra) -> dict:
    row = {"asin": asin, "title": title, "main_cat": main_cat, "brand": brand, "price": price}
    row.update(extra)
    return row


def write_lines(path: pathlib.Path, lines) -> pathlib.Path:
    """Rows (dicts become JSON, str/bytes are written as they are) one per line; .gz aware."""
    data = b""
    for line in lines:
        if isinstance(line, dict):
            line = json.dumps(line)
        if isinstance(line, str):
            line = line.encode("utf-8")
        data += line + b"\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as stream:
            stream.write(data)
    else:
        path.write_bytes(data)
    return path


def write_config(path: pathlib.Path, categories: dict, seed: int = 7, **extra) -> pathlib.Path:
    import yaml

    document = {"seed": seed, "categories": categories, **extra}
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


@pytest.fixture()
def raw_dir(tmp_path) -> pathlib.Path:
    folder = tmp_path / "raw"
    folder.mkdir()
    return folder


@pytest.fixture(scope="session")
def raw():
    """The helpers above, for tests (test modules cannot import a conftest reliably)."""
    import types

    return types.SimpleNamespace(
        review=review, meta=meta, write_lines=write_lines, write_config=write_config
    )

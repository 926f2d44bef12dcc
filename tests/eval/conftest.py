"""Real item corpora for evaluation tests, read straight from raw metadata files."""

from __future__ import annotations

import ast
import gzip
import json
import pathlib

import pytest

from calrec_core.item_text import format_item, make_attributes


def read_meta_texts(path: pathlib.Path) -> dict[str, str]:
    """asin -> formatted item text from a raw 2018 meta file (JSON or Python-literal lines)."""
    texts: dict[str, str] = {}
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = ast.literal_eval(line)
            if record.get("asin") in texts:
                continue
            categories = record.get("category") or []
            category = record.get("main_cat") or (categories[-1] if categories else None)
            attributes = make_attributes(
                record.get("title"), category, record.get("brand"), record.get("price")
            )
            texts[record["asin"]] = format_item(attributes)
    return dict(sorted(texts.items()))


@pytest.fixture(scope="session")
def real_corpora(shared_data) -> dict[str, dict[str, str]]:
    """Category -> (asin -> item text) for every real metadata file at hand."""
    amazon = shared_data / "amazon2018"
    files = {
        "Office_Products": shared_data / "office2014" / "meta_Office_Products.json.gz",
        "Gift_Cards": amazon / "meta_Gift_Cards.json.gz",
        "Magazine_Subscriptions": amazon / "meta_Magazine_Subscriptions.json.gz",
    }
    return {category: read_meta_texts(path) for category, path in files.items()}


def write_dataset(data_dir: pathlib.Path, category: str, corpus: dict[str, str],
                  examples: dict[str, list[dict]]) -> pathlib.Path:
    """Writes the ingested layout (split shards + corpus.parquet) with the data area's writer."""
    import pandas as pd

    from calrec_core.data.records import encode_tf_example, shard_name, write_records
    from calrec_core.item_text import parse_item_text

    folder = data_dir / category
    folder.mkdir(parents=True, exist_ok=True)
    for split, rows in examples.items():
        with open(folder / shard_name(split, 0, 1), "wb") as stream:
            write_records(stream, [encode_tf_example(row) for row in rows])
    parsed = {asin: parse_item_text(text) for asin, text in corpus.items()}
    pd.DataFrame({
        "asin": list(corpus),
        "title": [p.title for p in parsed.values()],
        "category": [p.category for p in parsed.values()],
        "brand": [p.brand for p in parsed.values()],
        "price": [p.price for p in parsed.values()],
        "text": list(corpus.values()),
    }).to_parquet(folder / "corpus.parquet", index=False)
    return data_dir


@pytest.fixture(scope="session")
def gift_cards_dir(sample_dir, tmp_path_factory) -> pathlib.Path:
    """The bundled real sample, ingested by the data area's Beam pipeline (DirectRunner)."""
    from calrec_core.data import roles_config_from_dict
    from calrec_core.data.ingest import run_ingest

    output = tmp_path_factory.mktemp("ingested")
    roles = roles_config_from_dict({"seed": 20240101,
                                    "categories": {"Gift_Cards": {"role": "eval"}}})
    run_ingest(str(sample_dir), None, str(output), config=roles)
    return output


@pytest.fixture(scope="session")
def dataset_writer():
    """write_dataset as a fixture (test directories are not packages)."""
    return write_dataset

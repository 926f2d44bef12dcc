"""Amazon Review 2018 ingestion (Apache Beam) and the readers of its output.

Output layout of ``run_ingest`` / ``calrec ingest`` (what training and evaluation read)::

    <out>/stats.json                     per-category accounting and Table 1 (load_stats)
    <out>/mixture.json                   {"exponent", "weights": {cat: w}, "users": {cat: n}}
    <out>/<Category>/{train,valid,test}-SSSSS-of-NNNNN.tfrecord   one Example per user
    <out>/<Category>/corpus.parquet      asin, title, category, brand, price, text (by asin)
    <out>/dead_letter/{reviews,metadata}.jsonl   bad lines with file, line and reason

Example features: user_id, category, asins, texts, timestamps; for valid/test the target is
the last element. Importing this package does not import Beam; ``run_ingest`` does, lazily.
"""

from calrec_core.data.config import (
    CategoryRole,
    RolesConfig,
    load_roles_config,
    roles_config_from_dict,
    roles_preset,
)
from calrec_core.data.ingest import run_ingest
from calrec_core.data.reader import (
    has_split,
    iter_split,
    load_corpus,
    load_mixture,
    load_stats,
    read_examples,
)
from calrec_core.data.records import SPLITS, decode_example, encode_example

__all__ = [
    "SPLITS",
    "CategoryRole",
    "RolesConfig",
    "decode_example",
    "encode_example",
    "has_split",
    "iter_split",
    "load_corpus",
    "load_mixture",
    "load_roles_config",
    "load_stats",
    "read_examples",
    "roles_config_from_dict",
    "roles_preset",
    "run_ingest",
]

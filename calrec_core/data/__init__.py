"""Amazon Review 2018 ingestion (Apache Beam) and the readers of its output.

Output layout of ``run_ingest`` / ``calrec ingest`` (what training and evaluation read)::

    <out>/stats.json                     per-category accounting and Table 1 (load_stats)
    <out>/mixture.json                   {"exponent", "weights": {cat: w}, "users": {cat: n}}
    <out>/<Category>/{train,valid,test}-SSSSS-of-NNNNN.tfrecord   one Example per user
    <out>/<Category>/corpus.parquet      asin, title, category, brand, price, text (by asin)
    <out>/dead_letter/{reviews,metadata}.jsonl   bad lines with file, line and reason
    <out>/INCOMPLETE                     only while an ingest runs or after one failed: every
                                         reader refuses the folder (the file says why)

Example features: user_id, category, asins, texts, timestamps; for valid/test the target is
the last element. Names load on first use (PEP 562): importing this package imports neither
Beam nor the TFRecord codec; the roles config needs only PyYAML.
"""

from calrec_core.lazy import lazy_exports

_EXPORTS = {
    "CategoryRole": "calrec_core.data.config",
    "RolesConfig": "calrec_core.data.config",
    "load_roles_config": "calrec_core.data.config",
    "roles_config_from_dict": "calrec_core.data.config",
    "roles_preset": "calrec_core.data.config",
    "run_ingest": "calrec_core.data.ingest",
    "has_split": "calrec_core.data.reader",
    "iter_split": "calrec_core.data.reader",
    "load_corpus": "calrec_core.data.reader",
    "load_mixture": "calrec_core.data.reader",
    "load_stats": "calrec_core.data.reader",
    "read_examples": "calrec_core.data.reader",
    "SPLITS": "calrec_core.data.records",
    "decode_tf_example": "calrec_core.data.records",
    "encode_tf_example": "calrec_core.data.records",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

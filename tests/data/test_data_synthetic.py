"""The benchmark's synthetic generator: reproducible bytes, and it ingests cleanly."""

from __future__ import annotations

from calrec_core.data import load_corpus, run_ingest
from calrec_core.data.synthetic import SyntheticSpec, write_synthetic

SPEC = SyntheticSpec(category="Syn", num_reviews=600, num_items=60, duplicate_rate=0.1,
                     missing_meta_rate=0.1, seed=3)


def test_synthetic_bytes_are_reproducible(tmp_path):
    first = write_synthetic(tmp_path / "a", SPEC)
    second = write_synthetic(tmp_path / "b", SPEC)
    for key in ("reviews", "metadata"):
        with open(first[key], "rb") as a, open(second[key], "rb") as b:
            assert a.read() == b.read()


def test_synthetic_data_ingests_with_duplicates_and_missing_metadata(raw, tmp_path):
    write_synthetic(tmp_path / "raw", SPEC)
    config = raw.write_config(tmp_path / "roles.yaml", {"Syn": {"role": "eval"}})
    stats = run_ingest(tmp_path / "raw", config, tmp_path / "out")["categories"]["Syn"]
    assert stats["read"] == 600 and stats["dead_letter"] == 0
    assert stats["metadata_dead_letter"] == 0  # Python-literal rows are read, not rejected
    assert stats["strict_duplicates"] > 0 and stats["metadata_repeated_rows"] > 0
    assert 0 < stats["items_without_metadata"] < stats["items"]
    corpus = load_corpus(tmp_path / "out", "Syn")
    assert "A Later Repeated Row" not in set(corpus.title)  # the first metadata row wins

"""Property test: randomly corrupted copies of the bundled files through the real ingestion.

For several seeds, some lines of the bundled reviews and metadata are broken in ways ingestion
must dead-letter and others are changed in ways it must ignore (CRLF, a BOM, extra keys,
spacing). Whatever the mix, the accounting identity holds, exactly the broken lines are dead
letters, and the kept sequences equal a plain-Python computation over the intact records.
"""

from __future__ import annotations

import collections
import gzip
import json
import random

import pytest

from calrec_core.data import load_corpus, read_examples, run_ingest

CATEGORY = "Magazine_Subscriptions"
BOM = b"\xef\xbb\xbf"


def _dump(row: dict) -> bytes:
    return json.dumps(row).encode("utf-8")


def _truncate(line: bytes, rng) -> bytes:
    """A prefix ending on a character boundary (so it is broken JSON, not broken UTF-8)."""
    return line[: rng.choice([k for k in range(1, len(line) - 1) if line[k] < 0x80])]


def _with_escape(row: dict, field: str, escape: str) -> bytes:
    """The row as JSON with ``field``'s value written raw: a string with a JSON escape such
    as a lone surrogate ('"\\ud83d"') or a number no int64 holds ('1e20')."""
    return _dump({**row, field: "@@RAW@@"}).replace(b'"@@RAW@@"', escape.encode("ascii"))


# name -> (line, row, rng) -> (new bytes, dead-letter reason or None when the record survives)
REVIEW_MUTATIONS = {
    "truncate": lambda line, row, rng: (_truncate(line, rng), "malformed_json"),
    "invalid_utf8": lambda line, row, rng: (line[:5] + b"\xff\xfe" + line[5:], "not_utf8"),
    "surrogate_text": lambda line, row, rng: (_with_escape(row, "reviewText", '"\\ud83d"'),
                                              "unpaired_surrogate_reviewText"),
    "surrogate_user": lambda line, row, rng: (_with_escape(row, "reviewerID", '"\\udc00"'),
                                              "unpaired_surrogate_reviewerID"),
    "huge_time": lambda line, row, rng: (_with_escape(row, "unixReviewTime", "1e20"),
                                         "out_of_range_unixReviewTime"),
    "no_asin": lambda line, row, rng: (_dump({k: v for k, v in row.items() if k != "asin"}),
                                       "missing_asin"),
    "text_rating": lambda line, row, rng: (_dump({**row, "overall": "five"}),
                                           "non_numeric_overall"),
    "blank": lambda line, row, rng: (b"  \t", "blank_line"),
    "array": lambda line, row, rng: (b"[1, 2]", "not_an_object"),
    # Survivors: the record is the same after parsing.
    "crlf": lambda line, row, rng: (line + b"\r", None),
    "extra_key": lambda line, row, rng: (_dump({**row, "junk": [1, {"a": None}]}), None),
    "spacing": lambda line, row, rng: (json.dumps(row, separators=(" ,  ", " :  ")).encode(),
                                       None),
}
META_MUTATIONS = {
    "truncate": lambda line, row, rng: (_truncate(line, rng), "malformed_record"),
    "surrogate_title": lambda line, row, rng: (_with_escape(row, "title", '"\\ud83d"'),
                                               "unpaired_surrogate_title"),
    "no_asin": lambda line, row, rng: (_dump({k: v for k, v in row.items() if k != "asin"}),
                                       "missing_asin"),
    "crlf": lambda line, row, rng: (line + b"\r", None),
}


def _lines(path) -> list[bytes]:
    with gzip.open(path, "rb") as stream:
        return stream.read().splitlines()


def _load(line: bytes) -> dict:
    try:
        return json.loads(line)
    except ValueError:  # a Python-literal metadata line: only valid JSON lines are mutated
        return {}


def _corrupt(lines, mutations, rng, share):
    """(new lines, {1-based line: reason}) with about ``share`` of the lines mutated."""
    out, bad = list(lines), {}
    for index in rng.sample(range(len(lines)), int(share * len(lines))):
        row = _load(lines[index])
        if not row:
            continue
        name = rng.choice(sorted(mutations))
        out[index], reason = mutations[name](lines[index], row, rng)
        if reason is not None:
            bad[index + 1] = reason
    if 1 not in bad:
        out[0] = BOM + out[0]  # a byte-order mark on an intact first line changes nothing
    return out, bad


def reference_sequences(lines, bad_lines, min_events):
    """user -> [(asin, time)] from the intact records: chronological (file order on ties),
    strictly deduplicated, long enough; plus the counts ingestion must report."""
    by_user = collections.defaultdict(list)
    for number, line in enumerate(lines, start=1):
        if number in bad_lines:
            continue
        row = json.loads(line)
        text = "" if row.get("reviewText") is None else str(row["reviewText"])
        by_user[row["reviewerID"]].append(
            (int(row["unixReviewTime"]), number, row["asin"], text, float(row["overall"])))
    sequences, duplicates, too_short = {}, 0, 0
    for user, events in by_user.items():
        events.sort(key=lambda event: (event[0], event[1]))
        kept = []
        for event in events:
            if kept and (kept[-1][0], *kept[-1][2:]) == (event[0], *event[2:]):
                duplicates += 1
            else:
                kept.append(event)
        if len(kept) >= min_events:
            sequences[user] = [(event[2], event[0]) for event in kept]
        else:
            too_short += len(kept)
    return sequences, duplicates, too_short


def _write(path, lines):
    with gzip.open(path, "wb") as stream:
        stream.write(b"".join(line + b"\n" for line in lines))


@pytest.fixture(scope="module")
def clean_corpus(sample_dir, tmp_path_factory, raw):
    """Item texts of the untouched files, the reference for items whose metadata survives."""
    folder = tmp_path_factory.mktemp("clean")
    config = raw.write_config(folder / "roles.yaml", {CATEGORY: {"role": "eval"}})
    run_ingest(sample_dir, config, folder / "out")
    corpus = load_corpus(folder / "out", CATEGORY)
    return dict(zip(corpus.asin, corpus.text, strict=True))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_corrupted_copies_keep_exactly_the_intact_records(seed, sample_dir, raw, raw_dir,
                                                          tmp_path, clean_corpus):
    rng = random.Random(seed)
    reviews = _lines(sample_dir / f"{CATEGORY}_5.json.gz")
    metadata = _lines(sample_dir / f"meta_{CATEGORY}.json.gz")
    new_reviews, bad_reviews = _corrupt(reviews, REVIEW_MUTATIONS, rng, share=0.05)
    new_meta, bad_meta = _corrupt(metadata, META_MUTATIONS, rng, share=0.05)
    _write(raw_dir / f"{CATEGORY}_5.json.gz", new_reviews)
    _write(raw_dir / f"meta_{CATEGORY}.json.gz", new_meta)
    config = raw.write_config(tmp_path / "roles.yaml", {CATEGORY: {"role": "eval"}})
    output = tmp_path / "out"
    stats = run_ingest(raw_dir, config, output)["categories"][CATEGORY]

    assert stats["read"] == len(reviews)
    assert stats["read"] == (stats["kept"] + stats["strict_duplicates"] + stats["dead_letter"]
                             + sum(stats["filtered"].values()))
    letters = [json.loads(line) for line in
               (output / "dead_letter" / "reviews.jsonl").read_text().splitlines()]
    assert {d["line"]: d["reason"] for d in letters} == bad_reviews
    meta_letters = [json.loads(line) for line in
                    (output / "dead_letter" / "metadata.jsonl").read_text().splitlines()]
    assert {d["line"]: d["reason"] for d in meta_letters} == bad_meta
    assert stats["metadata_rows"] == len(metadata)

    expected, duplicates, too_short = reference_sequences(reviews, bad_reviews, min_events=3)
    got = {ex["user_id"]: list(zip(ex["asins"], ex["timestamps"], strict=True))
           for ex in read_examples(output, CATEGORY, "test")}
    assert got == expected
    assert stats["strict_duplicates"] == duplicates
    assert stats["filtered"]["too_short"] == too_short
    # Items keep their clean text unless one of their metadata rows was broken.
    broken = {_load(metadata[line - 1]).get("asin") for line in bad_meta}
    corpus = load_corpus(output, CATEGORY)
    for asin, text in zip(corpus.asin, corpus.text, strict=True):
        if asin not in broken:
            assert text == clean_corpus[asin], asin

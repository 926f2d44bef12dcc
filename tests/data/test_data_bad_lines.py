"""Any failure on one input line is that line's dead letter (file, line, reason), never the
run's: odd digits in a time, JSON or a metadata value nested far too deep."""

from __future__ import annotations

import json

import pytest

from calrec_core.data import load_corpus, read_examples, run_ingest
from calrec_core.data.raw import BadLine, parse_meta, parse_review

GOOD = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 100, "overall": 4.0}
DEEP_JSON = b"[" * 50_000 + b"]" * 50_000
DEEP_TITLE = "[" * 300 + '"Deep"' + "]" * 300


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (json.dumps({**GOOD, "unixReviewTime": "--5"}).encode(), "bad_unixReviewTime"),
        (json.dumps({**GOOD, "unixReviewTime": "\u00b2"}).encode(), "bad_unixReviewTime"),
        (json.dumps({**GOOD, "unixReviewTime": "\u0661\u0662"}).encode(), "bad_unixReviewTime"),
        (b'{"reviewerID": ' + DEEP_JSON + b"}", "nested_too_deep"),
        (DEEP_JSON, "nested_too_deep"),
    ],
)
def test_every_review_line_failure_is_a_bad_line(raw, reason):
    with pytest.raises(BadLine) as caught:
        parse_review(raw, line=1)
    assert caught.value.reason == reason


def test_a_string_time_of_ascii_digits_still_parses():
    assert parse_review(json.dumps({**GOOD, "unixReviewTime": " -5 "}).encode(), 1).timestamp == -5


def test_deep_metadata_is_a_bad_line_or_flattened():
    with pytest.raises(BadLine, match="nested_too_deep"):
        parse_meta(b'{"asin": "B1", "title": ' + DEEP_JSON + b"}")
    # 300 deep parses as JSON: the title is its one string, not a recursion in item_text.
    asin, attributes = parse_meta(('{"asin": "B1", "title": ' + DEEP_TITLE + "}").encode())
    assert (asin, attributes.title) == ("B1", "Deep")


def test_bad_lines_anywhere_are_counted_dead_letters_and_the_ingest_finishes(
        raw_dir, raw, tmp_path):
    good = [raw.review(user, f"B{i}", 10 + i) for user in ("U1", "U2") for i in range(3)]
    bad = [
        json.dumps(raw.review("U3", "B1", "--5")),
        json.dumps(raw.review("U3", "B1", "\u00b2")),
        b'{"reviewerID": ' + DEEP_JSON + b"}",
    ]
    raw.write_lines(raw_dir / "Cat_5.json.gz", [*good[:3], *bad, *good[3:]])
    raw.write_lines(raw_dir / "meta_Cat.json.gz", [
        raw.meta("B0", "Zero"), b'{"asin": "B1", "title": ' + DEEP_JSON + b"}",
        '{"asin": "B2", "title": ' + DEEP_TITLE + "}", raw.meta("B1", "One")])
    config = raw.write_config(tmp_path / "roles.yaml", {"Cat": {"role": "eval"}})
    output = tmp_path / "out"
    stats = run_ingest(raw_dir, config, output)["categories"]["Cat"]
    assert (stats["read"], stats["dead_letter"], stats["kept"]) == (9, 3, 6)
    assert stats["metadata_dead_letter"] == 1
    letters = [json.loads(line) for line in
               (output / "dead_letter" / "reviews.jsonl").read_text().splitlines()]
    assert [(d["file"], d["line"], d["reason"]) for d in letters] == [
        ("Cat_5.json.gz", 4, "bad_unixReviewTime"), ("Cat_5.json.gz", 5, "bad_unixReviewTime"),
        ("Cat_5.json.gz", 6, "nested_too_deep")]
    meta_letters = [json.loads(line) for line in
                    (output / "dead_letter" / "metadata.jsonl").read_text().splitlines()]
    assert [(d["file"], d["line"], d["reason"]) for d in meta_letters] == [
        ("meta_Cat.json.gz", 2, "nested_too_deep")]
    corpus = load_corpus(output, "Cat").set_index("asin")
    assert corpus.loc["B1", "title"] == "One" and corpus.loc["B2", "title"] == "Deep"
    assert {ex["user_id"] for ex in read_examples(output, "Cat", "test")} == {"U1", "U2"}

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


def test_a_reingest_leaves_exactly_its_own_categories_readable(raw_dir, raw, tmp_path, capsys):
    import shutil

    from calrec_core import cli
    from calrec_core.errors import CalrecError

    for name in ("A", "B"):
        raw.write_lines(raw_dir / f"{name}_5.json.gz",
                        [raw.review(f"{name}{u}", f"I{i}", 10 + i)
                         for u in range(3) for i in range(3)])
    both = raw.write_config(tmp_path / "both.yaml", {"A": {"role": "eval"},
                                                     "B": {"role": "eval"}})
    only_a = raw.write_config(tmp_path / "a.yaml", {"A": {"role": "eval"}})
    output = tmp_path / "out"
    run_ingest(raw_dir, both, output)
    kept_b = tmp_path / "old_B"
    shutil.copytree(output / "B", kept_b)
    assert len(read_examples(output, "B", "test")) == 3

    run_ingest(raw_dir, only_a, output)
    assert not list((output / "B").glob("*.tfrecord"))
    assert not (output / "B" / "corpus.parquet").exists()
    assert len(read_examples(output, "A", "test")) == 3
    # Even with B's old files put back, B is not this folder's data: stats.json does not list it.
    shutil.copytree(kept_b, output / "B", dirs_exist_ok=True)
    for read in (lambda: read_examples(output, "B", "test"), lambda: load_corpus(output, "B")):
        with pytest.raises(CalrecError, match=r"no category 'B': its last ingest produced \['A'\]"):
            read()
    code = cli.main(["evaluate", "--data", str(output), "--category", "B", "--methods", "lir",
                     "--preset", "tiny", "--output", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "no category 'B'" in err, err

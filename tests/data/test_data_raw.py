"""One raw line -> record: every bad-line reason, Python-literal metadata, category rules."""

from __future__ import annotations

import json

import pytest

from calrec_core.data.raw import BadLine, item_category, parse_meta, parse_review
from calrec_core.item_text import ItemAttributes

GOOD = {"reviewerID": "U1", "asin": "B1", "unixReviewTime": 100, "overall": 4.0,
        "reviewText": "fine"}


def _line(row) -> bytes:
    return json.dumps(row).encode()


def test_good_review_keeps_the_dedup_fields():
    review = parse_review(_line(GOOD) + b"\n", line=3)
    assert (review.user_id, review.asin, review.timestamp, review.rating, review.line) == (
        "U1", "B1", 100, 4.0, 3)
    other_text = parse_review(_line({**GOOD, "reviewText": "fine!"}), line=4)
    assert other_text.text_digest != review.text_digest
    no_text = {key: value for key, value in GOOD.items() if key != "reviewText"}
    assert parse_review(_line(no_text), 1).text_digest == parse_review(
        _line({**GOOD, "reviewText": ""}), 1).text_digest


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"reviewerID": "U1", "asin": ', "malformed_json"),
        (b"\xff\xfe" + _line(GOOD), "not_utf8"),
        (b"   ", "blank_line"),
        (b"[1, 2]", "not_an_object"),
        (_line({**GOOD, "reviewerID": None}), "missing_reviewerID"),
        (_line({k: v for k, v in GOOD.items() if k != "asin"}), "missing_asin"),
        (_line({k: v for k, v in GOOD.items() if k != "unixReviewTime"}),
         "missing_unixReviewTime"),
        (_line({**GOOD, "unixReviewTime": "soon"}), "bad_unixReviewTime"),
        (_line({**GOOD, "overall": "five"}), "non_numeric_overall"),
        (_line({k: v for k, v in GOOD.items() if k != "overall"}), "missing_overall"),
    ],
)
def test_bad_review_lines_name_their_reason(raw, reason):
    with pytest.raises(BadLine) as caught:
        parse_review(raw, line=1)
    assert caught.value.reason == reason


def test_metadata_python_literal_lines_are_read_safely():
    literal = b"{'asin': 'B9', 'title': 'Kid\\'s Book', 'main_cat': 'Books', 'price': '$3.50'}"
    asin, attributes = parse_meta(literal)
    assert asin == "B9"
    assert attributes == ItemAttributes("Kid's Book", "Books", "Unknown", "$3.50")
    with pytest.raises(BadLine, match="malformed_record"):
        parse_meta(b"{'asin': __import__('os').getcwd()}")


def test_category_prefers_main_cat_then_img_alt_then_last_category_entry():
    assert item_category({"main_cat": "Toys &amp; Games", "category": ["A", "B"]}) == (
        "Toys & Games")
    img = '<img src="https://x/y.png" class="nav-categ-image" alt="AMAZON FASHION"/>'
    assert item_category({"main_cat": img, "category": ["A", "B"]}) == "AMAZON FASHION"
    assert item_category({"main_cat": '<img src="x.png"/>', "category": ["A", "B", ""]}) == "B"
    assert item_category({"main_cat": "", "category": []}) == ""
    _, attributes = parse_meta(_line({"asin": "B1", "main_cat": " ", "category": []}))
    assert attributes.category == "Unknown" and attributes.title == "Unknown"


def test_metadata_needs_an_asin():
    with pytest.raises(BadLine, match="missing_asin"):
        parse_meta(_line({"title": "x"}))


def _json_only(monkeypatch):
    """parse_review as if orjson refused every line: the plain json path, the reference."""
    import orjson

    from calrec_core.data import raw

    def refuse(_text):
        raise orjson.JSONDecodeError("refused", "", 0)

    monkeypatch.setattr(raw.orjson, "loads", refuse)


def _outcome(line: bytes):
    try:
        return parse_review(line, 1)
    except BadLine as error:
        return error.reason


TRICKY_REVIEW_LINES = [
    *(_line({**GOOD, field: value}) for field in ("unixReviewTime", "overall", "reviewText",
                                                  "reviewerID", "asin")
      for value in (10**30, -(10**30), 2**63, 2**64, 2**63 - 1, 123456789012345678901,
                    98765432109876543210987654321, 10**300, 1e300, 0.1, -0.0, [1, 10**25],
                    {"a": 10**25}, None, True, "12", "x")),
    *(_line(GOOD).replace(b'"overall": 4.0', b'"overall": ' + literal) for literal in (
        b"NaN", b"Infinity", b"-Infinity", b"1e400", b"1" + b"0" * 5000, b"4.9999999999999999999",
        b"1E2", b"-0")),
    _line(GOOD).replace(b'"unixReviewTime": 100', b'"unixReviewTime": 1' + b"0" * 5000),
    _line(GOOD).replace(b'"fine"', b'"\\ud83d"'), _line(GOOD).replace(b'"fine"', b'"\\udc00x"'),
    _line(GOOD).replace(b'"fine"', b'"a\\u0000b\\"\\\\"'), _line(GOOD) + b" \t",
    b'{"reviewerID": "U1", "reviewerID": "U2", "asin": "B1", "unixReviewTime": 1, "overall": 1}',
    b'{"reviewerID": "U1", "asin": "B1", "unixReviewTime": 1, "overall": 1, "x": '
    + b"[" * 2000 + b"]" * 2000 + b"}",
    b"[1, 2]", b'"text"', b"{}", b'{"a": 1,}', b"{'asin': 'B1'}", b'{"a": "\x01"}',
]


def test_the_fast_parse_gives_what_json_alone_gives(monkeypatch, sample_dir):
    """Every tricky line, and every review of the bundled real sample, parses to the same
    record or the same dead-letter reason through orjson as through json alone."""
    import gzip

    lines = list(TRICKY_REVIEW_LINES)
    for path in sorted(sample_dir.glob("*_5.json.gz")):
        with gzip.open(path, "rb") as stream:
            lines += stream.read().splitlines()
    fast = [_outcome(line) for line in lines]
    _json_only(monkeypatch)
    assert [_outcome(line) for line in lines] == fast
    assert len({reason for reason in fast if isinstance(reason, str)}) >= 6

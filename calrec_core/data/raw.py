"""Parsing one raw Amazon Review 2018 line (review or metadata) into a small record.

Reviews and metadata are JSON lines as published; some published metadata files hold
Python-literal lines (single quotes), read with ``ast.literal_eval`` (never ``eval``). A line
that cannot be used raises ``BadLine`` with a short reason that becomes a dead-letter record,
including valid JSON the outputs cannot hold: a lone surrogate escape (``"\\ud83d"``) in a field
that is kept has no UTF-8 encoding, and a time outside int64 does not fit a TFRecord. The
parsers raise nothing else: any other failure on one line (a nesting too deep to parse, a
field no rule foresaw) is that line's fault, never the run's, and becomes ``BadLine`` too.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import math
import re
from typing import NamedTuple

import orjson

from calrec_core.item_text import ItemAttributes, clean_text, make_attributes

# unixReviewTime is stored as a TFRecord int64.
MIN_TIMESTAMP, MAX_TIMESTAMP = -(2**63), 2**63 - 1
# A time given as a string: ASCII digits only ("²" and "--5" pass str.isdigit-style checks).
_INTEGER = re.compile(r"\s*-?[0-9]+\s*", re.ASCII)


class BadLine(ValueError):
    """A raw line that cannot become a record; ``reason`` is a short snake_case tag."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class Review(NamedTuple):
    """The fields of one review that sequencing and strict dedup need."""

    user_id: str  # reviewerID.
    asin: str  # Item id.
    timestamp: int  # unixReviewTime (seconds).
    rating: float  # overall.
    text_digest: bytes  # blake2b-128 of reviewText: dedup compares texts without holding them.
    line: int  # 1-based line in the review file; breaks timestamp ties in file order.


def decode_line(raw: bytes) -> str:
    """UTF-8 text of a line without its line ending; blank or non-UTF-8 lines are bad."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadLine("not_utf8") from None
    text = text.rstrip("\r\n")
    if not text.strip():
        raise BadLine("blank_line")
    return text


def _check_encodable(value: object, field: str) -> None:
    """Raises when a kept string (or one nested in a list/dict) holds a lone surrogate."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise BadLine(f"unpaired_surrogate_{field}") from None
    elif isinstance(value, (list, tuple)):
        for entry in value:
            _check_encodable(entry, field)
    elif isinstance(value, dict):
        for key, entry in value.items():
            _check_encodable(key, field)
            _check_encodable(entry, field)


def _required_string(row: dict, field: str) -> str:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadLine(f"missing_{field}")
    if not isinstance(value, str):
        raise BadLine(f"bad_{field}")
    _check_encodable(value, field)
    return value


def _timestamp(row: dict) -> int:
    value = row.get("unixReviewTime")
    if value is None:
        raise BadLine("missing_unixReviewTime")
    if isinstance(value, bool):
        raise BadLine("bad_unixReviewTime")
    if isinstance(value, str) and _INTEGER.fullmatch(value):
        timestamp = int(value)
    elif isinstance(value, int):
        timestamp = value
    elif isinstance(value, float) and value.is_integer():
        timestamp = int(value)
    else:
        raise BadLine("bad_unixReviewTime")
    if not MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP:
        raise BadLine("out_of_range_unixReviewTime")
    return timestamp


def _rating(row: dict) -> float:
    value = row.get("overall")
    if value is None:
        raise BadLine("missing_overall")
    if isinstance(value, bool):
        raise BadLine("non_numeric_overall")
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise BadLine("non_numeric_overall") from None
    if not math.isfinite(rating):
        raise BadLine("non_numeric_overall")
    return rating


def _bad_line_on_any_error(parse):
    """Turns any failure of ``parse`` on one line into ``BadLine`` naming it."""

    @functools.wraps(parse)
    def wrapper(*args, **kwargs):
        try:
            return parse(*args, **kwargs)
        except BadLine:
            raise
        except RecursionError:
            raise BadLine("nested_too_deep") from None
        except Exception as error:  # noqa: BLE001 - one bad line never stops an ingest
            raise BadLine(f"unparseable_{type(error).__name__}") from None

    return wrapper


def _plain_review(row, line: int) -> Review | None:
    """The Review of a row orjson read whose fields are the plain types published files hold
    (a non-blank reviewerID and asin, an int64 time, a finite float rating, a string or no
    reviewText), or None: parse_review then reads the line with json and checks every rule.
    orjson reads such a row as json would (it refuses lone surrogates, so its strings need no
    UTF-8 check), about three times faster."""
    if type(row) is not dict:
        return None
    user_id, asin = row.get("reviewerID"), row.get("asin")
    timestamp, rating = row.get("unixReviewTime"), row.get("overall")
    review_text = row.get("reviewText", "")
    if (type(user_id) is str and type(asin) is str and type(timestamp) is int
            and type(rating) is float and type(review_text) is str and user_id.strip()
            and asin.strip() and MIN_TIMESTAMP <= timestamp <= MAX_TIMESTAMP
            and math.isfinite(rating)):
        digest = hashlib.blake2b(review_text.encode("utf-8"), digest_size=16).digest()
        return Review(user_id, asin, timestamp, rating, digest, line)
    return None


@_bad_line_on_any_error
def parse_review(raw: bytes, line: int) -> Review:
    """One review line -> ``Review``; raises ``BadLine`` naming what is wrong."""
    text = decode_line(raw)
    try:
        review = _plain_review(orjson.loads(text), line)
    except orjson.JSONDecodeError:  # not always bad: json reads NaN, lone surrogates, ...
        review = None
    if review is not None:
        return review
    try:
        row = json.loads(text)
    except ValueError:
        raise BadLine("malformed_json") from None
    if not isinstance(row, dict):
        raise BadLine("not_an_object")
    review_text = row.get("reviewText")
    review_text = "" if review_text is None else str(review_text)
    _check_encodable(review_text, "reviewText")
    return Review(
        user_id=_required_string(row, "reviewerID"),
        asin=_required_string(row, "asin"),
        timestamp=_timestamp(row),
        rating=_rating(row),
        text_digest=hashlib.blake2b(review_text.encode("utf-8"), digest_size=16).digest(),
        line=line,
    )


def _load_meta_row(text: str) -> dict:
    try:
        row = json.loads(text)
    except ValueError:
        # Some published metadata files are Python literals: {'asin': '...', ...}.
        try:
            row = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            raise BadLine("malformed_record") from None
    if not isinstance(row, dict):
        raise BadLine("not_an_object")
    return row


_IMG_ALT = re.compile(r"<img[^>]*\balt\s*=\s*(['\"])(?P<alt>.*?)\1", re.IGNORECASE | re.DOTALL)


def _clean_main_cat(value: object) -> str:
    """main_cat, where a few rows hold an HTML img tag whose alt text names the category."""
    if not isinstance(value, str):
        return ""
    match = _IMG_ALT.search(value)
    return clean_text(match["alt"]) if match else clean_text(value)


def item_category(row: dict) -> str:
    """``main_cat`` when usable, else the most specific (last) non-empty ``category`` entry."""
    main_cat = _clean_main_cat(row.get("main_cat"))
    if main_cat:
        return main_cat
    categories = row.get("category")
    if isinstance(categories, str):
        categories = [categories]
    if isinstance(categories, (list, tuple)):
        for entry in reversed(categories):
            cleaned = clean_text(entry)
            if cleaned:
                return cleaned
    return ""


@_bad_line_on_any_error
def parse_meta(raw: bytes, strip_markup: bool = True) -> tuple[str, ItemAttributes]:
    """One metadata line -> (asin, attributes); raises ``BadLine``.

    strip_markup: drop scraping residue from the attributes (see calrec_core.item_text).
    """
    row = _load_meta_row(decode_line(raw))
    asin = _required_string(row, "asin")
    for field in ("title", "brand", "price", "main_cat", "category"):
        _check_encodable(row.get(field), field)
    attributes = make_attributes(
        title=row.get("title"),
        category=item_category(row),
        brand=row.get("brand"),
        price=row.get("price"),
        strip_markup=strip_markup,
    )
    return asin, attributes


def preview(raw: bytes, limit: int = 200) -> str:
    """A short, always-printable excerpt of a bad line for its dead-letter record."""
    return raw[:limit].decode("utf-8", errors="backslashreplace").rstrip("\r\n")

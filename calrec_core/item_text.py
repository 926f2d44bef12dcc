"""Item text: the flattened four-attribute description of CALRec §3.2 and §4.

An item is written as ``Title: <t>. Category: <c>. Brand: <b>. Price: <p>.`` with the
attributes truncated to 25/15/15/15 whitespace words, ``Unknown`` for a missing value,
and no ids. ``parse_item_text`` inverts the format for hierarchical matching (§6).
"""

from __future__ import annotations

import dataclasses
import html
import re

ATTRIBUTES = ("title", "category", "brand", "price")
# Word budgets per attribute (§4 Dataset: 25, 15, 15 and 15 words).
WORD_LIMITS = {"title": 25, "category": 15, "brand": 15, "price": 15}
UNKNOWN = "Unknown"
_LABELS = {"title": "Title", "category": "Category", "brand": "Brand", "price": "Price"}

_TAG = re.compile(r"<[^>]*>?")
_SPACE = re.compile(r"\s+")
_ITEM_PATTERN = re.compile(
    r"^\s*Title:\s*(?P<title>.*?)\.\s+Category:\s*(?P<category>.*?)\.\s+"
    r"Brand:\s*(?P<brand>.*?)\.\s+Price:\s*(?P<price>.*?)\.?\s*$",
    re.DOTALL,
)


@dataclasses.dataclass(frozen=True)
class ItemAttributes:
    """The four attributes of one item, already cleaned and truncated."""

    title: str = UNKNOWN  # Product title, at most 25 words.
    category: str = UNKNOWN  # main_cat, else the most specific category entry.
    brand: str = UNKNOWN  # Brand name.
    price: str = UNKNOWN  # Price as published, e.g. "$11.22".

    def as_tuple(self) -> tuple[str, str, str, str]:
        return (self.title, self.category, self.brand, self.price)


def clean_text(value: object) -> str:
    """HTML-unescapes, strips tags and collapses whitespace; non-strings become ''."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = str(value)
    text = html.unescape(html.unescape(value))
    text = _TAG.sub(" ", text)
    return _SPACE.sub(" ", text).strip()


def truncate_words(text: str, max_words: int) -> str:
    return " ".join(text.split()[:max_words])


def normalize_attribute(name: str, value: object) -> str:
    """Cleans, truncates and strips trailing periods (they would blur the format)."""
    text = truncate_words(clean_text(value), WORD_LIMITS[name]).rstrip(" .")
    return text if text else UNKNOWN


def make_attributes(title=None, category=None, brand=None, price=None) -> ItemAttributes:
    return ItemAttributes(
        title=normalize_attribute("title", title),
        category=normalize_attribute("category", category),
        brand=normalize_attribute("brand", brand),
        price=normalize_attribute("price", price),
    )


def format_item(attributes: ItemAttributes) -> str:
    """``Title: t. Category: c. Brand: b. Price: p.`` (the paper's §3.2 example)."""
    return " ".join(
        f"{_LABELS[name]}: {getattr(attributes, name)}." for name in ATTRIBUTES
    )


def parse_item_text(text: str) -> ItemAttributes | None:
    """Reads the four attributes back from generated text; None on a format error."""
    match = _ITEM_PATTERN.match(text)
    if match is None:
        return None
    values = {name: match.group(name).strip() or UNKNOWN for name in ATTRIBUTES}
    return ItemAttributes(**values)

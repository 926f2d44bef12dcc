"""Item text: the flattened four-attribute description of CALRec §3.2 and §4.

An item is written as ``Title: <t>. Category: <c>. Brand: <b>. Price: <p>.`` with the
attributes truncated to 25/15/15/15 whitespace words, ``Unknown`` for a missing value,
and no ids. ``parse_item_text`` inverts the format for hierarchical matching (§6).

Markup residue (``strip_markup``, on by default; the paper does not discuss it): the raw
2018 metadata holds scraping artefacts that are not item text, e.g. titles that are the
tail of an HTML attribute (``Magazines" />``), values cut inside a tag
(``<span class="a-size-medium``), brands given as a list, and doubly escaped entities.
Left in, many distinct items share the residue, the model learns to generate it and BM25
ties them. The same mode writes a list or dict value as its strings (never a Python repr),
drops the contents of ``<script>``/``<style>`` elements, and also caps each attribute in
characters, so one 100 KB "word" cannot pass the word budget whole.
``strip_markup=False`` reproduces the earlier cleaning exactly.
"""

from __future__ import annotations

import ast
import dataclasses
import html
import re

ATTRIBUTES = ("title", "category", "brand", "price")
# Word budgets per attribute (§4 Dataset: 25, 15, 15 and 15 words).
WORD_LIMITS = {"title": 25, "category": 15, "brand": 15, "price": 15}
# Character budgets (strip_markup): 12 characters per budgeted word, far above real values.
CHAR_LIMITS = {name: 12 * words for name, words in WORD_LIMITS.items()}
UNKNOWN = "Unknown"
_LABELS = {"title": "Title", "category": "Category", "brand": "Brand", "price": "Price"}

_TAG = re.compile(r"<[^>]*>?")  # Earlier cleaning: any "<" starts a tag.
# A tag starts with "<" and a name, "/" or "!" ("5 < 6 inch" is text); unclosed runs to the end.
_MARKUP_TAG = re.compile(r"<[A-Za-z/!][^>]*>?")
# The dangling end of a tag whose start was cut off: 'Magazines" />', 'Scientific />'.
_TAG_TAIL = re.compile(r"""\s*(?:["']\s*/?|/)>\s*$""")
_SPACE = re.compile(r"\s+")
# A script or style element is code, not text: dropped with its contents (unclosed: to the end).
_CODE_ELEMENT = re.compile(r"<(script|style)\b[^>]*>.*?(?:</\1\s*>|$)",
                           re.IGNORECASE | re.DOTALL)
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


def _as_list(value: object) -> list | None:
    """A list value, or a string that spells a Python/JSON list of strings; else None."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and value.strip().startswith("[") and value.strip().endswith("]"):
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
            return None
        if isinstance(parsed, list) and all(isinstance(v, str) for v in parsed):
            return parsed
    return None


def _leaves(value: object) -> list[str]:
    """The strings of a list, tuple or dict value nested to any depth, in order (numbers as
    their text, None skipped); iterative, since a value nested 300 deep is still one field."""
    leaves, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, (list, tuple)):
            stack.extend(reversed(item))
        elif item is not None:
            leaves.append(item if isinstance(item, str) else str(item))
    return leaves


def clean_text(value: object, strip_markup: bool = True) -> str:
    """HTML-unescapes, strips tags and collapses whitespace; None becomes ''.

    strip_markup: also drop dangling tag ends and script/style elements, keep a lone "<"
    that starts no tag, and write a list or dict value (e.g. a list-valued brand) as its
    distinct cleaned strings joined by ", " instead of its Python repr.
    """
    if value is None:
        return ""
    if strip_markup:
        entries = _leaves(value) if isinstance(value, (list, tuple, dict)) else _as_list(value)
        if entries is not None:
            cleaned = (clean_text(entry, strip_markup) for entry in _leaves(entries))
            return ", ".join(dict.fromkeys(c for c in cleaned if c))
    if not isinstance(value, str):
        value = str(value)
    text = html.unescape(html.unescape(value))
    if not strip_markup:
        return _SPACE.sub(" ", _TAG.sub(" ", text)).strip()
    text = _MARKUP_TAG.sub(" ", _CODE_ELEMENT.sub(" ", text))
    previous = None
    while previous != text:  # 'x" /> />' -> 'x'
        previous, text = text, _TAG_TAIL.sub("", text)
    return _SPACE.sub(" ", text).strip()


def truncate_words(text: str, max_words: int) -> str:
    return " ".join(text.split()[:max_words])


def truncate_chars(text: str, max_chars: int) -> str:
    """At most ``max_chars`` characters, cut after the last whole word that fits (inside the
    word only when the first word alone is longer)."""
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    if text[max_chars].isspace():
        return cut
    space = cut.rfind(" ")
    return cut[:space] if space > 0 else cut


def normalize_attribute(name: str, value: object, strip_markup: bool = True) -> str:
    """Cleans, truncates and strips trailing periods (they would blur the format)."""
    text = truncate_words(clean_text(value, strip_markup), WORD_LIMITS[name])
    if strip_markup:
        text = truncate_chars(text, CHAR_LIMITS[name])
    text = text.rstrip(" .")
    return text if text else UNKNOWN


def make_attributes(
    title=None, category=None, brand=None, price=None, *, strip_markup: bool = True
) -> ItemAttributes:
    return ItemAttributes(
        title=normalize_attribute("title", title, strip_markup),
        category=normalize_attribute("category", category, strip_markup),
        brand=normalize_attribute("brand", brand, strip_markup),
        price=normalize_attribute("price", price, strip_markup),
    )


def has_markup_residue(text: str) -> bool:
    """Whether an item text still holds markup: an HTML tag, entity or dangling tag end
    (reported per catalog, so an evaluation shows whether its corpus was cleaned)."""
    return bool(
        _MARKUP_TAG.search(text) or re.search(r"""["']?\s*/>|&(?:#\d+|[a-z]+);""", text)
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

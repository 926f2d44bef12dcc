"""Ingestion statistics: accounting and CALRec's Table 1 columns.

Pure functions over the counters the pipeline gathers, so the numbers are checkable
without Beam and ``calrec stats`` can print them for a person.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping

from calrec_core.item_text import UNKNOWN, ItemAttributes

FILTER_REASONS = ("too_short", "user_sampled_out")
# Counted after sampling and dedup but before the minimum-length filter, so Table 1 can be
# reconciled with a plain count of the file (a user with too few events is still a user).
BEFORE_FILTER = ("users", "items", "purchases")
_WORD = re.compile(r"[^\W_]+")


def attribute_words(attributes: ItemAttributes) -> list[str]:
    """Lowercase natural words of the four attributes ('Unknown' placeholders excluded)."""
    words: list[str] = []
    for value in attributes.as_tuple():
        if value != UNKNOWN:
            words += _WORD.findall(value.lower())
    return words


def corpus_word_stats(items: Iterable[ItemAttributes]) -> dict:
    """Word tokens, types and item count over a category's item corpus (Table 1)."""
    counts: collections.Counter = collections.Counter()
    num_items = 0
    for attributes in items:
        counts.update(attribute_words(attributes))
        num_items += 1
    return {"items": num_items, "word_tokens": sum(counts.values()), "word_vocab_size": len(counts)}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0


def table1_row(counts: Mapping[str, int]) -> dict:
    """CALRec Table 1 columns from one category's counters."""
    users, items, purchases = counts["users"], counts["items"], counts["purchases"]
    before_dedup = purchases + counts["strict_duplicates"] + counts["filtered"]["too_short"]
    before_filter = counts.get("before_filter", {})
    return {
        # Before the minimum-length filter (after sampling and dedup); see BEFORE_FILTER.
        "users_before_filter": before_filter.get("users", users),
        "items_before_filter": before_filter.get("items", items),
        "purchases_before_filter": before_filter.get("purchases", purchases),
        "users": users,
        "duplicate_purchases_pct": 100.0 * _ratio(counts["strict_duplicates"], before_dedup),
        "items": items,
        "total_purchases": purchases,
        "items_per_user": _ratio(purchases, users),
        "purchases_per_item": _ratio(purchases, items),
        "density": _ratio(purchases, users * items),
        "words_per_item": _ratio(counts["word_tokens"], items),
        "word_vocab_size": counts["word_vocab_size"],
        "avg_word_frequency": _ratio(counts["word_tokens"], counts["word_vocab_size"]),
    }


def check_accounting(category: str, counts: Mapping) -> None:
    """read = kept + strict_duplicates + dead_letter + filtered, and the counts before the
    minimum-length filter = after it + what it removed; raises when either does not hold."""
    filtered = sum(counts["filtered"].values())
    total = counts["kept"] + counts["strict_duplicates"] + counts["dead_letter"] + filtered
    if counts["read"] != total:
        raise RuntimeError(
            f"{category}: accounting mismatch: read {counts['read']} != kept {counts['kept']} + "
            f"duplicates {counts['strict_duplicates']} + dead letter {counts['dead_letter']} + "
            f"filtered {filtered}"
        )
    before = counts.get("before_filter")
    if before is None:
        return
    pairs = (
        ("users", before["users"], counts["users"] + counts["filtered_users"]["too_short"]),
        ("purchases", before["purchases"], counts["kept"] + counts["filtered"]["too_short"]),
    )
    for name, got, expected in pairs:
        if got != expected:
            raise RuntimeError(f"{category}: accounting mismatch: {name} before the length "
                               f"filter {got} != kept + too short {expected}")
    if before["items"] < counts["items"]:
        raise RuntimeError(f"{category}: accounting mismatch: items before the length filter "
                           f"{before['items']} < after it {counts['items']}")


_TABLE_COLUMNS = (
    ("users_before_filter", "Users (all)", "{:d}"),
    ("items_before_filter", "Items (all)", "{:d}"),
    ("users", "# Users", "{:d}"),
    ("duplicate_purchases_pct", "% Dup", "{:.1f}%"),
    ("items", "# Items", "{:d}"),
    ("total_purchases", "Purchases", "{:d}"),
    ("items_per_user", "Items/User", "{:.2f}"),
    ("purchases_per_item", "Purch/Item", "{:.2f}"),
    ("density", "Density", "{:.2g}"),
    ("words_per_item", "Words/Item", "{:.2f}"),
    ("word_vocab_size", "Vocab", "{:d}"),
    ("avg_word_frequency", "Avg Word Freq", "{:.1f}"),
)


def format_table(stats: Mapping) -> str:
    """Table 1 (plus role, dead letters, filtered and mixture weight) as aligned text.

    "(all)" columns count users and items before the minimum-length filter; the rest after it.
    """
    from tabulate import tabulate

    headers = ["Category", "Role", *(title for _, title, _ in _TABLE_COLUMNS),
               "Dead", "Filtered", "No meta", "Mix w"]
    rows = []
    for name, category in stats["categories"].items():
        table = category["table1"]
        rows.append([
            name,
            category["role"],
            *(fmt.format(table.get(key, table[key.replace("_before_filter", "")]))
              for key, _, fmt in _TABLE_COLUMNS),
            category["dead_letter"],
            sum(category["filtered"].values()),
            category["items_without_metadata"],
            f"{category['mixture']['weight']:.3f}",
        ])
    align = ("left", "left", *("right",) * (len(headers) - 2))
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    colalign=align)

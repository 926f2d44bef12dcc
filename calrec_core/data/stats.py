"""Ingestion statistics: accounting, the Stage I mixture and CALRec's Table 1 columns.

Pure functions over the counters the pipeline gathers, so the numbers are checkable
without Beam and ``calrec stats`` can print them for a person.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Mapping

from calrec_core.item_text import UNKNOWN, ItemAttributes

FILTER_REASONS = ("too_short", "user_sampled_out")
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


def mixture_weights(users: Mapping[str, int], exponent: float = 0.3) -> dict:
    """Stage I sampling weights proportional to |U| ** exponent, normalised to sum to 1 (§3.3)."""
    raw = {name: (count**exponent if count > 0 else 0.0) for name, count in users.items()}
    total = sum(raw.values())
    if total <= 0:
        raise ValueError("no category has users with training sequences; nothing to mix")
    return {
        "exponent": exponent,
        "weights": {name: raw[name] / total for name in sorted(raw)},
        "users": {name: int(users[name]) for name in sorted(users)},
    }


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / denominator if denominator else 0.0


def table1_row(counts: Mapping[str, int]) -> dict:
    """CALRec Table 1 columns from one category's counters."""
    users, items, purchases = counts["users"], counts["items"], counts["purchases"]
    before_dedup = purchases + counts["strict_duplicates"] + counts["filtered"]["too_short"]
    return {
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
    """read = kept + strict_duplicates + dead_letter + filtered; raises when it does not hold."""
    filtered = sum(counts["filtered"].values())
    total = counts["kept"] + counts["strict_duplicates"] + counts["dead_letter"] + filtered
    if counts["read"] != total:
        raise RuntimeError(
            f"{category}: accounting mismatch: read {counts['read']} != kept {counts['kept']} + "
            f"duplicates {counts['strict_duplicates']} + dead letter {counts['dead_letter']} + "
            f"filtered {filtered}"
        )


_TABLE_COLUMNS = (
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
    """Table 1 (plus role, dead letters, filtered and mixture weight) as aligned text."""
    from tabulate import tabulate

    headers = ["Category", "Role", *(title for _, title, _ in _TABLE_COLUMNS),
               "Dead", "Filtered", "No meta", "Mix w"]
    rows = []
    for name, category in stats["categories"].items():
        table = category["table1"]
        rows.append([
            name,
            category["role"],
            *(fmt.format(table[key]) for key, _, fmt in _TABLE_COLUMNS),
            category["dead_letter"],
            sum(category["filtered"].values()),
            category["items_without_metadata"],
            f"{category['mixture']['weight']:.3f}",
        ])
    align = ("left", "left", *("right",) * (len(headers) - 2))
    return tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True,
                    colalign=align)

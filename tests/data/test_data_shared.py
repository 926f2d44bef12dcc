"""Counts on the real shared categories against an independent plain-python computation."""

from __future__ import annotations

import collections
import gzip
import json

import pytest

from calrec_core.data import load_corpus, read_examples, run_ingest

pytestmark = pytest.mark.shared_data

AMAZON_ROLES = {
    "Gift_Cards": "eval",
    "Magazine_Subscriptions": "eval",
    "All_Beauty": "pretrain",
    "AMAZON_FASHION": "validation",
    "Appliances": "pretrain",
}
MIN_EVENTS = {"eval": 3, "validation": 2, "pretrain": 2}


def reference_counts(path, min_events: int) -> dict:
    """Sort each user's reviews by time (file order on ties), drop strict duplicates."""
    by_user = collections.defaultdict(list)
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        for number, line in enumerate(stream):
            row = json.loads(line)
            by_user[row["reviewerID"]].append((row["unixReviewTime"], number, row["asin"],
                                               row.get("reviewText", ""), row["overall"]))
    duplicates, users, items, purchases = 0, 0, set(), 0
    all_items, all_purchases = set(), 0
    for events in by_user.values():
        events.sort(key=lambda event: (event[0], event[1]))
        kept = []
        for event in events:
            if kept and (kept[-1][0], kept[-1][2], kept[-1][3], kept[-1][4]) == (
                    event[0], event[2], event[3], event[4]):
                duplicates += 1
            else:
                kept.append(event)
        all_purchases += len(kept)
        all_items.update(event[2] for event in kept)
        if len(kept) >= min_events:
            users += 1
            purchases += len(kept)
            items.update(event[2] for event in kept)
    return {"users": users, "items": len(items), "purchases": purchases,
            "strict_duplicates": duplicates,
            "before_filter": {"users": len(by_user), "items": len(all_items),
                              "purchases": all_purchases}}


def _ingest(raw, folder, roles, tmp_path):
    config = raw.write_config(tmp_path / "roles.yaml",
                              {name: {"role": role} for name, role in roles.items()})
    output = tmp_path / "out"
    return output, run_ingest(folder, config, output)["categories"]


def _check(stats, folder, roles, output):
    for name, role in roles.items():
        expected = reference_counts(folder / f"{name}_5.json.gz", MIN_EVENTS[role])
        got = stats[name]
        assert {key: got[key] for key in expected} == expected, name
        assert got["examples"]["train"] == expected["users"]
        assert len(read_examples(output, name, "train")) == expected["users"]
        assert len(load_corpus(output, name)) == expected["items"]
        assert got["read"] == got["kept"] + got["strict_duplicates"] + got["dead_letter"] + sum(
            got["filtered"].values())
        table = got["table1"]
        assert (table["users_before_filter"], table["items_before_filter"],
                table["purchases_before_filter"]) == tuple(expected["before_filter"].values())


def test_amazon2018_categories_match_reference(shared_data, raw, tmp_path):
    folder = shared_data / "amazon2018"
    output, stats = _ingest(raw, folder, AMAZON_ROLES, tmp_path)
    _check(stats, folder, AMAZON_ROLES, output)
    assert (stats["Gift_Cards"]["users"], stats["Gift_Cards"]["items"]) == (458, 148)
    assert stats["Magazine_Subscriptions"]["strict_duplicates"] == 44
    assert stats["Magazine_Subscriptions"]["items_without_metadata"] == 6
    for name in ("All_Beauty", "AMAZON_FASHION", "Appliances"):
        assert stats[name]["items_without_metadata"] == stats[name]["items"] > 0
    # Table 1 before the length filter equals a plain count of each file's distinct users.
    users_in_file = {}
    for name in ("Appliances", "All_Beauty", "AMAZON_FASHION"):
        with gzip.open(folder / f"{name}_5.json.gz", "rt", encoding="utf-8") as stream:
            users_in_file[name] = len({json.loads(line)["reviewerID"] for line in stream})
        assert stats[name]["table1"]["users_before_filter"] == users_in_file[name]


def test_office2014_matches_reference(shared_data, raw, tmp_path):
    folder = shared_data / "office2014"
    roles = {"Office_Products": "eval"}
    output, stats = _ingest(raw, folder, roles, tmp_path)
    _check(stats, folder, roles, output)
    office = stats["Office_Products"]
    assert (office["users"], office["items"], office["purchases"]) == (4905, 2420, 53258)
    assert office["items_without_metadata"] == 0

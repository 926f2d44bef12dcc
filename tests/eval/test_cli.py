"""The evaluate / report / recommend subcommands through the real `calrec` entry point."""

from __future__ import annotations

import json

import pytest

from calrec_core.cli import main
from calrec_core.data import read_examples


def test_evaluate_report_and_recommend_commands(gift_cards_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["evaluate", "--data", str(gift_cards_dir), "--category", "Gift_Cards",
                 "--methods", "lir", "--preset", "tiny", "--max-users", "5",
                 "--output", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["methods"]["lir"]["num_users"] == 5
    assert main(["report", str(out / "metrics.json"), "--output", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "report.md").is_file()

    example = read_examples(gift_cards_dir, "Gift_Cards", "test")[0]
    history = json.dumps(example["asins"][:-1])
    capsys.readouterr()
    assert main(["recommend", "--history", history, "--data", str(gift_cards_dir),
                 "--category", "Gift_Cards", "--method", "lir", "-k", "3"]) == 0
    items = json.loads(capsys.readouterr().out)
    assert [item["rank"] for item in items] == [1, 2, 3]
    # LIR's best match for the last history item is that item (or an identical text).
    assert items[0]["text"] == example["texts"][-2]


def test_recommend_rejects_bad_history(gift_cards_dir):
    with pytest.raises(ValueError, match="JSON list"):
        main(["recommend", "--history", "not json", "--data", str(gift_cards_dir),
              "--category", "Gift_Cards", "--method", "lir"])
    with pytest.raises(SystemExit, match="needs --model"):
        main(["recommend", "--history", '["x"]', "--data", str(gift_cards_dir),
              "--category", "Gift_Cards", "--method", "calrec"])

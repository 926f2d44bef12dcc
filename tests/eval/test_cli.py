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


def _one_line_error(capsys, code, *fragments):
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in err, err


def test_recommend_rejects_bad_history(gift_cards_dir, capsys):
    base = ["recommend", "--data", str(gift_cards_dir), "--category", "Gift_Cards"]
    _one_line_error(capsys, main([*base, "--method", "lir", "--history", "not json"]),
                    "JSON list")
    _one_line_error(capsys, main([*base, "--method", "calrec", "--history", '["x y"]']),
                    "needs --model")
    example = read_examples(gift_cards_dir, "Gift_Cards", "test")[0]
    # A mistyped asin is refused, not matched as text (which scored every item 0).
    typo = example["asins"][0][:-1] + "Q"
    code = main([*base, "--method", "lir", "--history", json.dumps([example["asins"][0], typo])])
    _one_line_error(capsys, code, repr(typo), "not an asin of the Gift_Cards catalog")


def test_recommend_marks_history_items(gift_cards_dir, capsys):
    example = read_examples(gift_cards_dir, "Gift_Cards", "test")[0]
    history = example["asins"][:-1]
    assert main(["recommend", "--history", json.dumps(history), "--data", str(gift_cards_dir),
                 "--category", "Gift_Cards", "--method", "lir", "-k", "5"]) == 0
    captured = capsys.readouterr()
    items = json.loads(captured.out)
    assert [item["in_history"] for item in items] == [item["asin"] in history for item in items]
    assert items[0]["in_history"]  # LIR returns the last history item first
    assert "in the history" in captured.err


def test_recommend_shows_generations_and_all_tied_scores(gift_cards_dir):
    from calrec_core.eval import EvalConfig
    from calrec_core.eval.catalog import load_catalog
    from calrec_core.eval.generation import Generation
    from calrec_core.eval.recommend import recommend_with_details

    class Empty:  # a model whose every sample is empty (footnote 12)
        def sample(self, histories, template, seed):
            return [[Generation("", -1.0), Generation("", -3.0)] for _ in histories]

    catalog = load_catalog(gift_cards_dir, "Gift_Cards")
    example = read_examples(gift_cards_dir, "Gift_Cards", "test")[0]
    result = recommend_with_details(catalog, example["asins"][:-1], method="calrec",
                                    generator=Empty(), config=EvalConfig.tiny(), k=3)
    assert result["generations"] == ["", ""] and result["num_empty_generations"] == 2
    assert result["all_scores_tied"] and len(result["items"]) == 3


@pytest.mark.parametrize("flag", [["--max-users", "0"], ["--max-users", "-3"]])
def test_evaluate_validates_max_users(gift_cards_dir, tmp_path, capsys, flag):
    code = main(["evaluate", "--data", str(gift_cards_dir), "--category", "Gift_Cards",
                 "--methods", "lir", "--preset", "tiny", *flag, "--output", str(tmp_path)])
    _one_line_error(capsys, code, "--max-users must be a positive number")
    assert not (tmp_path / "run.json").exists()


def test_evaluate_errors_are_one_line(gift_cards_dir, tmp_path, capsys):
    base = ["evaluate", "--methods", "lir", "--preset", "tiny", "--category", "Gift_Cards"]
    _one_line_error(capsys, main([*base, "--data", str(tmp_path / "nowhere"),
                                  "--output", str(tmp_path / "o")]), "nowhere")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    _one_line_error(capsys, main([*base, "--data", str(gift_cards_dir), "--output",
                                  str(a_file)]), str(a_file))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    _one_line_error(capsys, main(["report", str(bad), "--output", str(tmp_path / "r")]),
                    str(bad))

"""The HTML reports carry everything their Markdown does, plus the plots: parsed with a real
HTML parser and compared table by table and line by line with the Markdown."""

from __future__ import annotations

import html.parser
import json
import re

import numpy as np
import pandas as pd
import pytest

from calrec_core.eval.metrics import METRIC_NAMES, NO_HISTORY
from calrec_core.eval.report import write_report
from calrec_core.experiment import preset
from calrec_core.experiment.plan import Plan
from calrec_core.experiment.report import write_experiment_report
from calrec_core.experiment.steps import render_report

CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
USERS = [f"u{i}" for i in range(6)]


class _Page(html.parser.HTMLParser):
    """Tables (rows of cell texts), the whole visible text and the images of a page."""

    def __init__(self, page: str) -> None:
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self._cell: list[str] | None = None
        self._skip = False
        self.feed(page)
        self.close()

    def handle_starttag(self, tag, attrs):
        if tag not in ("b", "code"):  # blocks and cells: words on either side stay apart
            self.text.append(" ")
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag in ("style", "title"):
            self._skip = True

    def handle_endtag(self, tag):
        if tag not in ("b", "code"):
            self.text.append(" ")
        if tag in ("td", "th"):
            self.tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag in ("style", "title"):
            self._skip = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if not self._skip:
            self.text.append(data)

    def visible_text(self) -> str:
        return " ".join("".join(self.text).split())


def _plain(text: str) -> str:
    """Markdown inline markup (bold, code) removed, whitespace collapsed."""
    return " ".join(text.replace("**", "").replace("`", "").split())


def _markdown_tables(markdown: str) -> list[list[list[str]]]:
    tables, current = [], None
    for line in markdown.splitlines():
        if line.lstrip().startswith("|"):
            if current is None:
                current = []
                tables.append(current)
            if not set(line.strip()) <= set("|-: "):  # the header's separator row
                current.append([_plain(c) for c in line.strip().strip("|").split("|")])
        else:
            current = None
    return tables


def _markdown_text_lines(markdown: str) -> list[str]:
    """Every line that is neither a table row nor an image, markup removed."""
    lines = []
    for line in markdown.splitlines():
        line = re.sub(r"^#+ |^- ", "", line.strip())
        if line and not line.startswith("|") and not line.startswith("!["):
            lines.append(_plain(line))
    return lines


def assert_page_carries_markdown(page: str, markdown: str) -> _Page:
    parsed = _Page(page)
    tables = _markdown_tables(markdown)
    assert tables, "the Markdown report has no tables"
    for table in tables:
        assert table in parsed.tables, f"table missing from the HTML: {table[0]}"
    text = parsed.visible_text()
    for line in _markdown_text_lines(markdown):
        assert line in text, f"line missing from the HTML: {line}"
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown):
        assert image not in parsed.images  # inlined, not linked
    assert all(src.startswith("data:image/png;base64,") for src in parsed.images)
    return parsed


def _metrics(seed: int, tied: bool = False) -> dict:
    rng = np.random.default_rng(seed)
    metrics = {"num_users": len(USERS), "num_generations": 4 * len(USERS),
               "num_empty_generations": 3, "num_users_all_scores_tied": 1}
    for prefix in ("", NO_HISTORY):
        for name in METRIC_NAMES:
            pes = float(rng.uniform(0.05, 0.3))
            metrics[f"{prefix}{name}_pes"] = pes / 4 if tied else pes
            metrics[f"{prefix}{name}_opt"] = pes + 0.1
    return metrics


def _evaluation(folder, category: str, method: str, model: str | None, seed: int,
                tied: bool = False) -> None:
    folder.mkdir(parents=True)
    result = {"category": category, "split": "test", "model": model, "corpus_size": 40,
              "preset": "tiny", "config": {"n_gen": 4, "n_preds": 10,
                                           "sampling_temperature": 0.5, "max_users": 6},
              "methods": {method: _metrics(seed, tied)}}
    (folder / "metrics.json").write_text(json.dumps(result))
    rng = np.random.default_rng(seed)
    rows = [{"user_id": user, "method": method,
             **{f"{name}_{variant}": float(rng.uniform())
                for name in METRIC_NAMES for variant in ("opt", "pes")}} for user in USERS]
    pd.DataFrame(rows).to_parquet(folder / "predictions.parquet")


def _run(folder, steps: int = 4) -> None:
    """A stage run folder with its training records (metrics.jsonl)."""
    folder.mkdir(parents=True)
    records = [{"kind": "train", "step": step, "nig": 3.0 / step, "tt": 2.0 / step,
                "seconds": 0.1} for step in range(1, steps + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _pipeline_folders(tmp_path) -> list:
    folders = []
    for index, category in enumerate(CATEGORIES):
        folder = tmp_path / "eval" / category
        _evaluation(folder / "calrec", category, "calrec", "fine-tuned", 10 * index)
        _evaluation(folder / "pretrained", category, "calrec", "pretrained", 10 * index + 1,
                    tied=True)
        _evaluation(folder / "lir", category, "lir", None, 10 * index + 2)
        folders.append(folder)
    return folders


def test_the_cross_run_report_page_holds_every_markdown_table_and_line(tmp_path):
    folders = _pipeline_folders(tmp_path)
    paths = write_report([folder / method / "metrics.json" for folder in folders
                          for method in ("calrec", "pretrained", "lir")], tmp_path / "out")
    markdown = paths["markdown"].read_text()
    # What the old page left out: rows without history items, counts, t-tests, warnings.
    assert "w/o history |" in markdown and "| num_empty_generations |" in markdown
    assert "Paired t-test p-values" in markdown and "WARNING calrec [pretrained]" in markdown
    parsed = assert_page_carries_markdown(paths["html"].read_text(), markdown)
    assert len(parsed.images) == 1  # the score plot, inlined
    assert paths["plot"].read_bytes().startswith(b"\x89PNG")


def test_the_pipeline_page_adds_the_loss_curves_of_every_training_run(tmp_path):
    folders = _pipeline_folders(tmp_path)
    runs = {"Stage I": tmp_path / "work" / "stage1"}
    for category in CATEGORIES:
        runs[f"Stage II {category}"] = tmp_path / "work" / category
    for folder in runs.values():
        _run(folder)
    report = render_report(folders, runs)
    parsed = assert_page_carries_markdown(report.html, report.markdown)
    # Markdown: tables only; HTML: the same plus the score plot and the loss curves.
    assert "![" not in report.markdown
    assert len(parsed.images) == 2 and "Training losses" in parsed.visible_text()
    assert len(parsed.tables) == len(_markdown_tables(report.markdown))
    # Without training runs the page has no loss section.
    assert "Training losses" not in render_report(folders).html


def test_the_experiment_page_carries_plan_timing_t_tests_and_loss_curves(tmp_path):
    config = preset("tiny")
    evaluations = {}
    for index, category in enumerate(CATEGORIES):
        evaluations[category] = {}
        for offset, (method, name, model) in enumerate([
                ("calrec", "calrec", "fine-tuned"), ("no_stage1", "calrec", "no_stage1"),
                ("pretrained", "calrec", "pretrained"), ("lir", "lir", None)]):
            folder = tmp_path / "eval" / category / method
            _evaluation(folder, category, name, model, 10 * index + offset)
            evaluations[category][method] = str(folder)
    phases = {"ingest": {"seconds": 3.0}, "probe": {"seconds": 2.0, "step_seconds": 0.1}}
    for run in ("stage1/calrec", *(f"stage2/{c}/{v}" for c in CATEGORIES
                                   for v in ("calrec", "no_stage1"))):
        _run(tmp_path / run)
        phases[run] = {"seconds": 5.0, "steps": 4, "step_seconds": 0.1,
                       "tokens_per_s": 1234.5, "device": "cpu", "devices": 1}
    phases["stage1/no_contrastive"] = {"seconds": 1.0}  # a phase without a run folder
    plan = Plan(stage1_steps=4, stage2_steps=4, stage1_eval_every=2, stage2_eval_every=2,
                test_users=6, estimate={"train": 40.0, "eval": 12.5})
    write_experiment_report(config, plan, evaluations, phases, tmp_path)
    markdown = (tmp_path / "report.md").read_text()
    assert "## Plan" in markdown and "| estimate.train | 40.0 |" in markdown
    assert "## Timing" in markdown and "vs calrec: p |" in markdown
    parsed = assert_page_carries_markdown((tmp_path / "report.html").read_text(), markdown)
    # The score plot, then one loss plot for Stage I and one per category's Stage II.
    assert len(parsed.images) == 1 + 1 + len(CATEGORIES)
    assert sorted(p.name for p in tmp_path.glob("losses-*.png")) == [
        "losses-1.png", "losses-2.png", "losses-3.png"]
    text = parsed.visible_text()
    assert "Stage I" in text and all(f"Stage II, {c}" in text for c in CATEGORIES)


def test_the_checker_notices_a_missing_table():
    markdown = "# r\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    with pytest.raises(AssertionError, match="table missing"):
        assert_page_carries_markdown("<html><body><h1>r</h1></body></html>", markdown)

"""Readable reports: one run's summary, and a Table 2-style comparison across runs.

Scores are written 'opt / pes' side by side (CALRec §4). When two runs of a category hold
per-user predictions, a paired t-test (Table 4) compares each method with the first one.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from calrec_core.eval.metrics import METRIC_NAMES, paired_t_test

_COUNT_KEYS = (
    "num_users", "num_target_missing", "num_empty_history", "num_users_all_scores_tied",
    "num_generations", "num_empty_generations",
)
_RATE_KEYS = ("format_error_rate", "match_all_four_rate", "match_title_rate")


def method_label(method: str, model: str | None) -> str:
    """'lir' alone; a generative method names its model, e.g. 'calrec [pretrained]'."""
    return method if method == "lir" or not model else f"{method} [{model}]"


def _opt_pes(metrics: dict, name: str) -> str:
    return f"{metrics[f'{name}_opt']:.4f} / {metrics[f'{name}_pes']:.4f}"


def _bar_plot(series: dict[str, dict], title: str, path: pathlib.Path) -> None:
    """Grouped bars: per metric, one opt bar and one (hatched) pes bar per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    labels = list(series)
    width = 0.8 / max(2 * len(labels), 1)
    x = np.arange(len(METRIC_NAMES))
    figure, axes = plt.subplots(figsize=(max(6.0, 1.8 * len(METRIC_NAMES)), 4.0))
    for i, label in enumerate(labels):
        for j, variant in enumerate(("opt", "pes")):
            values = [series[label][f"{name}_{variant}"] for name in METRIC_NAMES]
            axes.bar(x + (2 * i + j) * width, values, width, color=f"C{i}",
                     hatch="//" if variant == "pes" else None,
                     label=f"{label} ({variant})")
    axes.set_xticks(x + width * (len(labels) - 0.5), METRIC_NAMES)
    axes.set_ylabel("score")
    axes.set_title(title)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _metric_table(series: dict[str, dict]) -> list[str]:
    labels = list(series)
    lines = ["| Metric (opt / pes) | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name in METRIC_NAMES:
        lines.append(f"| {name} | " + " | ".join(_opt_pes(series[l], name) for l in labels) + " |")
    return lines


def write_run_report(result: dict, output_dir) -> pathlib.Path:
    """report.md and metrics.png for one run_evaluation output."""
    output_dir = pathlib.Path(output_dir)
    series = {method_label(m, result["model"]): v for m, v in result["methods"].items()}
    lines = [
        f"# Evaluation: {result['category']} ({result['split']} split)",
        "",
        f"Corpus: {result['corpus_size']} items, every one ranked. "
        f"Model: {result['model'] or 'none (text-only baseline)'}.",
        "",
        *_metric_table(series),
        "",
        "| Counts | " + " | ".join(series) + " |",
        "|---|" + "---|" * len(series),
    ]
    for key in (*_COUNT_KEYS, *_RATE_KEYS):
        values = [v.get(key) for v in series.values()]
        if any(value is not None for value in values):
            cells = ["" if v is None else (f"{v:.4f}" if isinstance(v, float) else str(v))
                     for v in values]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    lines += _hierarchical_lines(result["methods"])
    lines += ["", "![metrics](metrics.png)", ""]
    _bar_plot(series, f"{result['category']} ({result['split']})", output_dir / "metrics.png")
    path = output_dir / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def _hierarchical_lines(methods: dict) -> list[str]:
    """Table 8's last columns: change of (opt + pes) / 2, hierarchical match vs BM25 fusion."""
    if "calrec" not in methods or "calrec_hier" not in methods:
        return []
    cells = []
    for name in METRIC_NAMES:
        bm25, hier = (
            (methods[m][f"{name}_opt"] + methods[m][f"{name}_pes"]) / 2
            for m in ("calrec", "calrec_hier")
        )
        cells.append(f"{100 * (hier - bm25) / bm25:+.1f}%" if bm25 > 0 else "n/a")
    return ["", "Hierarchical match vs BM25 fusion, change in (opt + pes) / 2 (Table 8):", "",
            "| " + " | ".join(METRIC_NAMES) + " |", "|" + "---|" * len(METRIC_NAMES),
            "| " + " | ".join(cells) + " |"]


def _per_user(metrics_path: pathlib.Path, method: str):
    """user_id -> row of the run's predictions.parquet for one method (None if absent)."""
    predictions = metrics_path.parent / "predictions.parquet"
    if not predictions.is_file():
        return None
    import pandas as pd

    frame = pd.read_parquet(predictions)
    return frame[frame["method"] == method].set_index("user_id")


def write_report(metrics_paths: Sequence, output_path) -> dict[str, pathlib.Path]:
    """Table 2-style report (report.md, report.html, report.png) across runs and categories."""
    if not metrics_paths:
        raise ValueError("write_report needs at least one metrics.json")
    output_dir = pathlib.Path(output_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    by_category: dict[str, dict[str, dict]] = {}
    sources: dict[tuple[str, str], tuple[pathlib.Path, str]] = {}
    for raw_path in metrics_paths:
        path = pathlib.Path(raw_path)
        result = json.loads(path.read_text(encoding="utf-8"))
        category = f"{result['category']} ({result['split']})"
        for method, metrics in result["methods"].items():
            label = method_label(method, result.get("model"))
            if label in by_category.get(category, {}):  # same method and model twice
                label = f"{label} ({path.parent.name})"
            by_category.setdefault(category, {})[label] = metrics
            sources[(category, label)] = (path, method)
    md = ["# CALRec evaluation report", "",
          "Scores are optimistic / pessimistic (ties with the target counted first / last).", ""]
    html = ["<html><body><h1>CALRec evaluation report</h1>"]
    for category, series in by_category.items():
        md += [f"## {category}", "", *_metric_table(series), ""]
        html.append(f"<h2>{category}</h2><table border='1'><tr><th>Metric (opt / pes)</th>"
                    + "".join(f"<th>{label}</th>" for label in series) + "</tr>")
        for name in METRIC_NAMES:
            html.append(f"<tr><td>{name}</td>"
                        + "".join(f"<td>{_opt_pes(m, name)}</td>" for m in series.values())
                        + "</tr>")
        html.append("</table>")
        md += _t_test_lines(category, series, sources)
    plot_series = {f"{c}: {label}": m for c, s in by_category.items() for label, m in s.items()}
    _bar_plot(plot_series, "opt (plain) / pes (hatched)", output_dir / "report.png")
    md += ["![metrics](report.png)", ""]
    html.append("<img src='report.png'></body></html>")
    paths = {"markdown": output_dir / "report.md", "html": output_dir / "report.html",
             "plot": output_dir / "report.png"}
    paths["markdown"].write_text("\n".join(md), encoding="utf-8")
    paths["html"].write_text("\n".join(html), encoding="utf-8")
    return paths


def _t_test_lines(category: str, series: dict, sources: dict) -> list[str]:
    """Paired t-tests (Table 4) of every method against the category's first method."""
    labels = list(series)
    if len(labels) < 2:
        return []
    reference = _per_user(*sources[(category, labels[0])])
    if reference is None:
        return []
    lines = [f"Paired t-test p-values against {labels[0]} (same users):", "",
             "| Method | " + " | ".join(f"{n} opt / pes" for n in METRIC_NAMES) + " |",
             "|---|" + "---|" * len(METRIC_NAMES)]
    for label in labels[1:]:
        other = _per_user(*sources[(category, label)])
        if other is None:
            continue
        cells = []
        for name in METRIC_NAMES:
            values = []
            for variant in ("opt", "pes"):
                column = f"{name}_{variant}"
                try:
                    test = paired_t_test(reference[column].to_dict(), other[column].to_dict())
                    values.append(f"{test['p_value']:.4g}")
                except ValueError:
                    values.append("n/a")
            cells.append(" / ".join(values))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return [*lines, ""]

"""Readable reports: one run's summary, and a Table 2-style comparison across runs.

Scores are written 'opt / pes' side by side (CALRec §4). When two runs of a category hold
per-user predictions, a paired t-test (Table 4) compares each method with the first one.

Both reports state the settings (preset, N_gen) and, per method, the users, empty generations
and users whose every catalog score tied, and flag a method whose opt and pes scores diverge:
with ties the opt score credits the target for a tie it did not win (footnote 12: empty
output gives opt Recall@K = 1, pes = 0), so such a method's opt score and p-values mislead.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from calrec_core import storage
from calrec_core.eval.metrics import HISTORY_IN_TOP, METRIC_NAMES, NO_HISTORY, paired_t_test
from calrec_core.eval.report_html import markdown_page

_COUNT_KEYS = (
    "num_users", "num_target_missing", "num_empty_history", "num_users_all_scores_tied",
    "num_generations", "num_empty_generations", "num_nonfinite_logprobs",
)
# Counts shown per method in the cross-run report.
_SUMMARY_KEYS = ("num_users", "num_generations", "num_empty_generations",
                 "num_users_all_scores_tied")
# A metric "diverges" when its pes score is below this share of its opt score.
TIE_DIVERGENCE = 0.5
_RATE_KEYS = ("format_error_rate", "match_all_four_rate", "match_title_rate", HISTORY_IN_TOP)


def method_label(method: str, model: str | None) -> str:
    """'lir' alone; a generative method names its model, e.g. 'calrec [pretrained]'."""
    return method if method == "lir" or not model else f"{method} [{model}]"


def tie_warning(label: str, metrics: dict) -> str | None:
    """A warning when ties split the method's opt and pes scores apart, else None."""
    # The rank-averaged metrics: one user's tie at rank 1 alone can halve a small Recall@1.
    diverging = [name for name in ("ndcg@10", "mrr")
                 if metrics[f"{name}_opt"] > 0
                 and metrics[f"{name}_pes"] < TIE_DIVERGENCE * metrics[f"{name}_opt"]]
    if not diverging:
        return None
    name = diverging[0]
    users = metrics.get("num_users", 0)
    tied = metrics.get("num_users_all_scores_tied", 0)
    text = (f"WARNING {label}: optimistic and pessimistic scores diverge because of ties "
            f"({name} {_opt_pes(metrics, name)}); {tied} of {users} users had every catalog "
            "score tied")
    if metrics.get("num_generations"):
        text += (f", {metrics.get('num_empty_generations', 0)} of {metrics['num_generations']} "
                 "generations were empty")
    return text + ". Read its pessimistic scores; its opt scores and p-values reward ties."


def settings_line(result: dict) -> str:
    """Preset, users and sampling settings of one run."""
    config = result.get("config", {})
    users = max((m.get("num_users", 0) for m in result["methods"].values()), default=0)
    return (f"Preset: {result.get('preset', 'unknown')}. Users: {users}. "
            f"N_gen: {config.get('n_gen')}, N_preds: {config.get('n_preds')}, "
            f"sampling temperature: {config.get('sampling_temperature')}, "
            f"max users: {config.get('max_users')}"
            + (f" (a uniform sample, seed {config.get('seed')})" if config.get("max_users")
               else "") + ".")


def _opt_pes(metrics: dict, name: str) -> str:
    return f"{metrics[f'{name}_opt']:.4f} / {metrics[f'{name}_pes']:.4f}"


def metric_panels(panels: dict[str, dict[str, dict]], title: str, path,
                  names: Sequence[str] = METRIC_NAMES) -> storage.Path:
    """One panel per category ({panel title: {method label: metrics}}): per metric, one bar
    per method, solid up to its pessimistic score and light above it up to its optimistic
    score, so the light part is what ties alone add. The legend sits outside the panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.patches import Patch

    labels = list(dict.fromkeys(label for series in panels.values() for label in series))
    colors = {label: f"C{i % 10}" for i, label in enumerate(labels)}
    # Large type: the page shows the figure scaled down to its width.
    with plt.rc_context({"font.size": 13}):
        panel_width = max(4.5, 0.45 * len(names) * max(len(labels), 1))
        # Side by side only while that keeps the figure about as tall as wide on the page.
        columns = min(len(panels), 2) if panel_width <= 6.5 else 1
        rows = -(-len(panels) // columns)
        figure, axes = plt.subplots(rows, columns, figsize=(panel_width * columns, 4.2 * rows),
                                    squeeze=False, sharey=True)
        x = np.arange(len(names))
        for axis, (panel, series) in zip(axes.flat, panels.items(), strict=False):
            width = 0.8 / max(len(series), 1)
            for i, (label, metrics) in enumerate(series.items()):
                at = x + (i - (len(series) - 1) / 2) * width
                optimistic = [metrics[f"{name}_opt"] for name in names]
                pessimistic = [metrics[f"{name}_pes"] for name in names]
                axis.bar(at, optimistic, width, color=colors[label], alpha=0.3,
                         edgecolor=colors[label], linewidth=0.8)
                axis.bar(at, pessimistic, width, color=colors[label])
            axis.set_xticks(x, names)
            axis.set_title(panel)
            axis.grid(axis="y", alpha=0.3)
        for axis in axes[:, 0]:
            axis.set_ylabel("score")
        for axis in list(axes.flat)[len(panels):]:
            axis.set_visible(False)
        handles = [Patch(color=colors[label], label=label) for label in labels]
        handles += [Patch(color="0.35", label="pessimistic (solid)"),
                    Patch(facecolor="0.35", alpha=0.3, edgecolor="0.35",
                          label="optimistic (light: added by ties)")]
        figure.suptitle(title)
        figure.tight_layout()
        figure.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95),
                      frameon=False)
    path = storage.path(path)
    with path.open("wb") as stream:
        figure.savefig(stream, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return path


def _metric_table(series: dict[str, dict]) -> list[str]:
    labels = list(series)
    lines = ["| Metric (opt / pes) | " + " | ".join(labels) + " |",
             "|---|" + "---|" * len(labels)]
    for name in METRIC_NAMES:
        lines.append(f"| {name} | " + " | ".join(_opt_pes(series[l], name) for l in labels) + " |")
    # The same ranking with each user's own history items left out (a quality lever).
    for name in METRIC_NAMES:
        key = f"{NO_HISTORY}{name}"
        if all(f"{key}_opt" in series[label] for label in labels):
            lines.append(f"| {name} w/o history | "
                         + " | ".join(_opt_pes(series[l], key) for l in labels) + " |")
    return lines


def write_run_report(result: dict, output_dir) -> storage.Path:
    """report.md and metrics.png for one run_evaluation output (local or gs://)."""
    output_dir = storage.path(output_dir)
    series = {method_label(m, result["model"]): v for m, v in result["methods"].items()}
    lines = [
        f"# Evaluation: {result['category']} ({result['split']} split)",
        "",
        f"Corpus: {result['corpus_size']} items, every one ranked. "
        f"Model: {result['model'] or 'none (text-only baseline)'}.",
        "",
        settings_line(result),
        "",
        "Quality levers: " + ", ".join(f"{k} {v}" for k, v in result.get("levers", {}).items()),
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
    warnings = [tie_warning(label, metrics) for label, metrics in series.items()]
    lines += ["", *(f"**{w}**" for w in warnings if w)]
    lines += _hierarchical_lines(result["methods"])
    lines += ["", "![metrics](metrics.png)", ""]
    metric_panels({f"{result['category']} ({result['split']})": series}, "Evaluation",
                  output_dir / "metrics.png")
    path = output_dir / "report.md"
    storage.write_atomic(path, "\n".join(lines))
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


def _per_user(metrics_path: storage.Path, method: str):
    """user_id -> row of the run's predictions.parquet for one method (None if absent)."""
    predictions = metrics_path.parent / "predictions.parquet"
    if not predictions.is_file():
        return None
    import pandas as pd

    with storage.open_read(predictions) as stream:
        frame = pd.read_parquet(stream)
    return frame[frame["method"] == method].set_index("user_id")


def write_report(metrics_paths: Sequence, output_path) -> dict[str, storage.Path]:
    """Table 2-style report (report.md, report.html, report.png) across runs and categories;
    inputs and output local or gs://."""
    if not metrics_paths:
        raise ValueError("write_report needs at least one metrics.json")
    output_dir = storage.path(output_path)
    output_dir.mkdir(parents=True, exist_ok=True)
    by_category: dict[str, dict[str, dict]] = {}
    sources: dict[tuple[str, str], tuple[storage.Path, str]] = {}
    settings: dict[str, list[str]] = {}
    for raw_path in metrics_paths:
        path = storage.path(raw_path)
        try:
            result = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a metrics.json ({error})") from None
        category = f"{result['category']} ({result['split']})"
        settings.setdefault(category, []).append(f"{path.parent.name}: {settings_line(result)}")
        for method, metrics in result["methods"].items():
            label = method_label(method, result.get("model"))
            if label in by_category.get(category, {}):  # same method and model twice
                label = f"{label} ({path.parent.name})"
            by_category.setdefault(category, {})[label] = metrics
            sources[(category, label)] = (path, method)
    md = ["# CALRec evaluation report", "",
          "Scores are optimistic / pessimistic (ties with the target counted first / last).", ""]
    for category, series in by_category.items():
        warnings = [w for w in (tie_warning(label, m) for label, m in series.items()) if w]
        md += [f"## {category}", "", *(f"- {line}" for line in settings[category]), "",
               *_metric_table(series), "", *_counts_table(series), "",
               *(f"**{w}**\n" for w in warnings)]
        md += _t_test_lines(category, series, sources)
    paths = {"markdown": output_dir / "report.md", "html": output_dir / "report.html",
             "plot": output_dir / "report.png"}
    metric_panels(by_category, "Scores per category", paths["plot"])
    md += [f"![metrics]({paths['plot'].name})", ""]
    markdown = "\n".join(md)
    storage.write_atomic(paths["markdown"], markdown)
    storage.write_atomic(paths["html"], markdown_page(
        markdown, "CALRec evaluation report", {paths["plot"].name: paths["plot"]}))
    return paths


def _counts_table(series: dict[str, dict]) -> list[str]:
    labels = list(series)
    lines = ["| Counts | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for key in _SUMMARY_KEYS:
        lines.append(f"| {key} | " + " | ".join(str(series[l].get(key, "")) for l in labels)
                     + " |")
    return lines


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
        flag = " (ties: see warning)" if tie_warning(label, series[label]) else ""
        lines.append(f"| {label}{flag} | " + " | ".join(cells) + " |")
    return [*lines, ""]

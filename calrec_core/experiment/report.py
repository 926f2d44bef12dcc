"""The experiment's report: every method on the same test users, paired t-tests, timings.

Scores are 'opt / pes' (CALRec §4). Each trained variant and baseline is compared with
``calrec`` by a paired t-test over the users both ranked (Table 4's test); a row whose opt and
pes scores differ widely is flagged, since only ties (footnote 12) make them differ.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from calrec_core import storage
from calrec_core.eval.metrics import METRIC_NAMES, paired_t_test
from calrec_core.eval.report_html import markdown_page
from calrec_core.experiment.config import ExperimentConfig
from calrec_core.experiment.plan import Plan
from calrec_core.experiment.steps import loss_curve_sections

REPORT_FILES = ("report.md", "report.html", "report.json", "report.png")
# opt - pes above this share of opt marks a method whose ranking is decided by ties.
TIE_FLAG_SHARE = 0.25
COUNT_KEYS = ("num_users", "num_empty_generations", "num_generations",
              "num_users_all_scores_tied")


def _metric_pairs(metrics: dict) -> list[str]:
    """Metric names with both an _opt and a _pes column, the paper's four first."""
    names = {key[: -len("_opt")] for key in metrics if key.endswith("_opt")}
    names = {name for name in names if f"{name}_pes" in metrics}
    return [*[n for n in METRIC_NAMES if n in names], *sorted(names - set(METRIC_NAMES))]


def _per_user(folder: str, column: str) -> dict[str, float]:
    import pandas as pd

    with storage.open_read(storage.path(folder) / "predictions.parquet") as stream:
        frame = pd.read_parquet(stream, columns=["user_id", column])
    return dict(zip(frame["user_id"], frame[column].astype(float), strict=True))


def category_results(config: ExperimentConfig, folders: dict[str, str]) -> dict[str, Any]:
    """Per method: mean metrics and counts; per non-calrec method: the paired t-test."""
    methods: dict[str, dict] = {}
    for method, folder in folders.items():
        result = json.loads((storage.path(folder) / "metrics.json").read_text(encoding="utf-8"))
        methods[method] = next(iter(result["methods"].values()))
    tests: dict[str, dict] = {}
    if "calrec" in folders:
        reference = _per_user(folders["calrec"], config.test_metric)
        for method, folder in folders.items():
            if method == "calrec":
                continue
            try:
                tests[method] = paired_t_test(reference, _per_user(folder, config.test_metric))
            except ValueError as error:  # fewer than two shared users
                tests[method] = {"error": str(error)}
    return {"order": list(methods), "methods": methods, "t_tests": tests}


def _fmt(value, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) < 1e3 else f"{value:,.0f}"
    return str(value)


def _tied(metrics: dict, name: str) -> bool:
    opt, pes = metrics[f"{name}_opt"], metrics[f"{name}_pes"]
    return opt > 0 and (opt - pes) / opt > TIE_FLAG_SHARE


def _category_lines(config: ExperimentConfig, category: str, result: dict) -> list[str]:
    methods = result["methods"]
    names = _metric_pairs(next(iter(methods.values())))
    lines = [f"## {category}", "",
             "| method | " + " | ".join(f"{n} (opt / pes)" for n in names)
             + " | users | empty gens | all-tied users | "
             + f"{config.test_metric} vs calrec: p |",
             "|---" * (len(names) + 5) + "|"]
    for method, metrics in methods.items():
        cells = []
        for name in names:
            cell = f"{metrics[f'{name}_opt']:.4f} / {metrics[f'{name}_pes']:.4f}"
            cells.append(cell + (" (ties)" if _tied(metrics, name) else ""))
        test = result["t_tests"].get(method, {})
        p_value = ("-" if method == "calrec" else test.get("error") or
                   f"{test['p_value']:.3g} ({test['mean_first']:.4f} vs {test['mean_second']:.4f})")
        empty = f"{metrics.get('num_empty_generations', 0)} / {metrics.get('num_generations', 0)}"
        lines.append(f"| {method} | " + " | ".join(cells) + f" | {metrics['num_users']} | "
                     f"{empty} | {metrics.get('num_users_all_scores_tied', 0)} | {p_value} |")
    lines.append("")
    return lines


_TIMING_COLUMNS = ("seconds", "steps", "selected_step", "step_seconds", "first_step_seconds",
                   "tokens_per_s", "padding_fraction", "mfu", "users", "users_per_s")


def _timing_lines(phases: dict[str, dict]) -> list[str]:
    lines = ["## Timing", "", "| phase | " + " | ".join(_TIMING_COLUMNS) + " |",
             "|---" * (len(_TIMING_COLUMNS) + 1) + "|"]
    for name, values in phases.items():
        lines.append(f"| {name} | " + " | ".join(
            _fmt(values.get(column), 3 if column != "mfu" else 4)
            for column in _TIMING_COLUMNS) + " |")
    devices = {(v.get("device"), v.get("devices")) for v in phases.values() if v.get("device")}
    for device, count in sorted(devices, key=str):
        lines.append(f"\nTraining ran on {count} x {device}.")
    lines.append("")
    return lines


def _plan_lines(plan: Plan) -> list[str]:
    """Every field of the plan (plan.json), nested ones dotted, as a table."""
    def flatten(values: dict, prefix: str = ""):
        for key, value in values.items():
            if isinstance(value, dict):
                yield from flatten(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    rows = [f"| {key} | {_fmt(value, 1) if isinstance(value, float) else _fmt(value)} |"
            for key, value in flatten(plan.to_dict())]
    return ["## Plan", "", "| plan | value |", "|---|---|", *rows, ""]


def _plot(results: dict[str, dict], path: pathlib.Path) -> None:
    """One panel per category: every method's opt and pes scores of the paper's metrics."""
    from calrec_core.eval.report import metric_panels

    panels = {category: {method: result["methods"][method] for method in result["order"]}
              for category, result in results.items()}
    first = next(iter(next(iter(panels.values())).values()))
    names = [name for name in _metric_pairs(first) if name in METRIC_NAMES]
    metric_panels(panels, "calrec experiment: test split, same users per category", path,
                  names=names)


def _training_runs(phases: dict[str, dict], output: pathlib.Path) -> dict[str, dict]:
    """{plot title: {run: folder}} of the stage runs, whose phases are named after their
    folders (run.py's layout: stage1/<run>, stage2/<category>/<run>)."""
    groups: dict[str, dict] = {}
    for phase in phases:
        stage, _, rest = phase.partition("/")
        if stage not in ("stage1", "stage2") or not rest:
            continue
        group, _, run = rest.rpartition("/")
        title = "Stage I" if stage == "stage1" else f"Stage II, {group}"
        groups.setdefault(title, {})[run] = output / phase
    return groups


def _rankings_lines(evaluation) -> list[str]:
    """One line on the fine-tuned model's rankings beside its sampler, when there are any."""
    described = {
        "calrec_constrained": (
            f"calrec_constrained: decoding constrained to the catalog's item texts "
            f"({evaluation.constrained_decoding}, B {evaluation.beam_width}"
            + (", history items never generated" if evaluation.constrained_ban_history else "")
            + ")"),
        "calrec_rerank": (
            f"calrec_rerank: the model's {'mean' if evaluation.rerank_length_norm else 'summed'}"
            f" token log-probability over LIR's and the fusion's top {evaluation.rerank_pool}"),
    }
    if not evaluation.rankings:
        return []
    return ["Model rankings of the fine-tuned model: "
            + "; ".join(described[r] for r in evaluation.rankings)
            + f"; then the rest of the catalog by {evaluation.rank_rest_by}."]


def write_experiment_report(config: ExperimentConfig, plan: Plan,
                            evaluations: dict[str, dict[str, str]], phases: dict[str, dict],
                            output_dir) -> dict[str, Any]:
    """Writes report.md, its rendering report.html (plots inlined), report.json, report.png
    and the loss curves of the stage runs (losses-<n>.png); returns report.json's content."""
    output = pathlib.Path(output_dir)
    results = {category: category_results(config, folders)
               for category, folders in evaluations.items()}
    evaluation = config.eval
    lines = [
        "# calrec experiment", "",
        f"Preset `{config.preset}`; test split; "
        + (f"a uniform sample of {plan.test_users} users of each category (seed "
           f"{evaluation.seed}), the same for every method" if plan.test_users
           else "every user of each category") + f"; N_gen {evaluation.n_gen}, "
        f"N_preds {evaluation.n_preds}, sampling temperature {evaluation.sampling_temperature}, "
        f"seed {evaluation.seed}; training seed {config.train.seed}.",
        f"Plan: Stage I {plan.stage1_steps} steps, Stage II {plan.stage2_steps} steps, "
        f"batch {config.train.batch_size} users"
        + (f", budget {config.budget_minutes:g} min" if config.budget_minutes else "") + ".",
        *_rankings_lines(evaluation),
        "'(ties)' marks a score whose pessimistic value is far below the optimistic one: the "
        "ranking there is decided by tied catalog scores (footnote 12).", "",
    ]
    for category, result in results.items():
        lines += _category_lines(config, category, result)
    lines += _plan_lines(plan)
    lines += _timing_lines(phases)
    _plot(results, output / "report.png")
    lines += ["![scores per category](report.png)", ""]
    losses, plots = loss_curve_sections(_training_runs(phases, output), output)
    lines += losses
    markdown = "\n".join(lines)
    (output / "report.md").write_text(markdown, encoding="utf-8")
    (output / "report.html").write_text(
        markdown_page(markdown, "calrec experiment", {"report.png": output / "report.png",
                                                      **plots}), encoding="utf-8")
    content = {"config": config.to_dict(), "plan": plan.to_dict(), "categories": results,
               "timing": phases}
    temporary = output / "report.json.tmp"
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True, default=str),
                         encoding="utf-8")
    temporary.replace(output / "report.json")
    return content

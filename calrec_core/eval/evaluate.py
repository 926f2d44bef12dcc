"""Evaluation runs: a split's users scored against the full catalog, resumable per shard.

``run_evaluation`` writes, under its output directory:
  shards/<method>-<shard>.parquet  per-user rows of one shard (skipped when present)
  predictions.parquet              every method's per-user rows (top-K, ranks, metrics)
  metrics.json                     per method: mean metrics and counts
  report.md, metrics.png           a readable summary with an opt/pes bar plot
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

from calrec_core.eval.catalog import Catalog, load_catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.metrics import mean_metrics, metric_columns
from calrec_core.eval.scoring import MODEL_METHODS, check_methods, score_batch

MANIFEST_FILE = "run.json"


@dataclasses.dataclass
class EvalResult:
    """One method on one split."""

    method: str  # Method name (see calrec_core.eval.scoring).
    metrics: dict  # Mean metrics ("ndcg@10_opt", ...) and counts ("num_users", ...).
    per_user: object  # pandas.DataFrame, one row per user (see scoring._row).


def summarize(rows: Sequence[dict]) -> dict:
    """Mean metrics over users plus the counts the report shows."""
    summary: dict = mean_metrics(rows)
    num_samples = sum(r["num_samples"] for r in rows)
    summary.update(
        num_users=len(rows),
        num_target_missing=sum(1 for r in rows if not r["target_in_corpus"]),
        num_empty_history=sum(1 for r in rows if r["history_len"] == 0),
        num_users_all_scores_tied=sum(1 for r in rows if r["all_scores_tied"]),
        num_generations=num_samples,
        num_empty_generations=sum(r["num_empty_samples"] for r in rows),
    )
    if rows and rows[0]["method"] in ("calrec", "calrec_hier"):
        total = max(num_samples, 1)
        summary.update(
            format_error_rate=sum(r["num_format_errors"] for r in rows) / total,
            match_all_four_rate=sum(r["num_match_all_four"] for r in rows) / total,
            match_title_rate=sum(r["num_match_title"] for r in rows) / total,
        )
    return summary


def _select_users(examples: list[dict], config: EvalConfig) -> list[dict]:
    examples = sorted(examples, key=lambda e: e["user_id"])
    return examples[: config.max_users] if config.max_users is not None else examples


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="user", disable=not enabled)


def score_users(
    examples: Sequence[dict],
    catalog: Catalog,
    methods: Sequence[str],
    config: EvalConfig,
    *,
    sampler=None,
    progress=None,
) -> dict[str, list[dict]]:
    """Scores users in batches of config.user_batch_size; rows per method, user order kept."""
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for start in range(0, len(examples), config.user_batch_size):
        batch = examples[start : start + config.user_batch_size]
        for method, batch_rows in score_batch(
            batch, catalog, methods, config, sampler=sampler
        ).items():
            rows[method].extend(batch_rows)
        if progress is not None:
            progress.update(len(batch))
    return rows


def evaluate_split(
    model,
    tokenizer,
    data_dir,
    category: str,
    split: str,
    config: EvalConfig,
    method: str = "calrec",
    *,
    show_progress: bool = False,
    mesh=None,
) -> EvalResult:
    """Evaluates one method in memory (used by training for checkpoint selection).

    mesh: decode data-parallel on it (default: every local device when there are several).
    """
    import pandas as pd

    from calrec_core.data import read_examples
    from calrec_core.eval.generation import Sampler

    (method,) = check_methods([method])
    catalog = load_catalog(data_dir, category, config)
    examples = _select_users(read_examples(data_dir, category, split), config)
    sampler = Sampler(model, tokenizer, config, mesh) if method in MODEL_METHODS else None
    with _progress(len(examples), f"{category}/{split} {method}", show_progress) as bar:
        rows = score_users(examples, catalog, [method], config, sampler=sampler, progress=bar)
    rows = rows[method]
    return EvalResult(method, summarize(rows), pd.DataFrame(rows))


def load_model(model_source: str):
    """(model, tokenizer): 'pretrained' Gemma weights or a trained checkpoint directory."""
    if model_source == "pretrained":
        from calrec_core.model import load_pretrained

        return load_pretrained()
    path = pathlib.Path(model_source)
    if not path.exists():
        raise FileNotFoundError(f"model source {model_source!r}: not 'pretrained' nor a path")
    from calrec_core.model.export import load_trained

    return load_trained(path)


def _check_manifest(output_dir: pathlib.Path, manifest: dict) -> None:
    """Refuses to resume shards written under different settings."""
    path = output_dir / MANIFEST_FILE
    if path.is_file():
        previous = json.loads(path.read_text(encoding="utf-8"))
        if previous != manifest:
            raise ValueError(
                f"{output_dir} holds a run with other settings ({previous}); use a new output"
            )
    else:
        path.write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")


def _write_parquet(rows: list[dict], path: pathlib.Path) -> None:
    import pandas as pd

    temporary = path.with_suffix(".tmp")
    pd.DataFrame(rows).to_parquet(temporary, index=False)
    temporary.replace(path)  # atomic: a crash never leaves a half shard


def run_evaluation(
    data_dir,
    category: str,
    output_dir,
    *,
    model_source: str | None = None,
    methods: Sequence[str] = ("calrec", "lir"),
    split: str = "test",
    config: EvalConfig | None = None,
    model_and_tokenizer: tuple | None = None,
    show_progress: bool = True,
) -> dict:
    """Evaluates methods on one category/split; writes outputs (module docstring); returns
    the metrics.json content. Needs model_source ('pretrained' or a checkpoint path) or a
    loaded (model, tokenizer) for the generative methods."""
    import pandas as pd

    from calrec_core.data import read_examples
    from calrec_core.eval.generation import Sampler
    from calrec_core.eval.report import write_run_report

    config = config or EvalConfig.demo()
    methods = check_methods(methods)
    output_dir = pathlib.Path(output_dir)
    shard_dir = output_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    needs_model = any(m in MODEL_METHODS for m in methods)
    if needs_model and model_source is None and model_and_tokenizer is None:
        raise ValueError(f"methods {methods} need --model ('pretrained' or a checkpoint dir)")
    model_label = _model_label(model_source, model_and_tokenizer) if needs_model else None
    _check_manifest(output_dir, {
        "category": category, "split": split, "model": model_label,
        "config": dataclasses.asdict(config),
    })
    catalog = load_catalog(data_dir, category, config)
    examples = _select_users(read_examples(data_dir, category, split), config)
    sampler = None
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    num_shards = max(1, -(-len(examples) // config.shard_size))
    with _progress(len(examples), f"{category}/{split}", show_progress) as bar:
        for shard in range(num_shards):
            start = shard * config.shard_size
            shard_examples = examples[start : start + config.shard_size]
            paths = {m: shard_dir / f"{m}-{shard:05d}-of-{num_shards:05d}.parquet"
                     for m in methods}
            todo = [m for m in methods if not paths[m].is_file()]
            if todo and sampler is None and any(m in MODEL_METHODS for m in todo):
                model, tokenizer = model_and_tokenizer or load_model(model_source)
                sampler = Sampler(model, tokenizer, config)
            fresh = score_users(shard_examples, catalog, todo, config,
                                sampler=sampler) if todo else {}
            for method in methods:
                if method in fresh:
                    _write_parquet(fresh[method], paths[method])
                    rows[method].extend(fresh[method])
                else:
                    rows[method].extend(pd.read_parquet(paths[method]).to_dict("records"))
            bar.update(len(shard_examples))
    result = {
        "category": category,
        "split": split,
        "model": model_label,
        "corpus_size": catalog.size,
        "config": dataclasses.asdict(config),
        "metric_columns": metric_columns(),
        "methods": {m: summarize(rows[m]) for m in methods},
    }
    all_rows = [row for m in methods for row in rows[m]]
    pd.DataFrame(all_rows).to_parquet(output_dir / "predictions.parquet", index=False)
    (output_dir / "metrics.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    write_run_report(result, output_dir)
    return result


def _model_label(model_source: str | None, model_and_tokenizer) -> str:
    if model_source is None:
        return "in-memory model"
    return "pretrained" if model_source == "pretrained" else pathlib.Path(model_source).name

"""Evaluation runs: a split's users scored against the full catalog, resumable per shard.

``run_evaluation`` writes, under its output directory:
  run.json                         settings and input fingerprints the shards belong to
  shards/<method>-<shard>.parquet  per-user rows of one shard (skipped when present)
  predictions.parquet              every method's per-user rows (top-K, ranks, metrics)
  metrics.json                     per method: mean metrics and counts
  report.md, metrics.png           a readable summary with an opt/pes bar plot

Resuming: ``run.json`` records the settings and content fingerprints of the split, the corpus
and the model. A rerun into a folder whose shards were computed from anything else is REFUSED
with a one-line ``StaleOutputError`` (recomputing silently would hide that the folder held other
results); a folder without shards (e.g. an earlier run that failed at start) is simply reused.
Every file is written under a temporary name and renamed into place.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

from calrec_core import storage
from calrec_core.errors import StaleOutputError
from calrec_core.eval.catalog import Catalog, load_catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.metrics import mean_metrics, metric_columns
from calrec_core.eval.scoring import MODEL_METHODS, check_methods, quality_levers, score_batch
from calrec_core.folder_lock import locks_folder
from calrec_core.user_sample import sample_users

MANIFEST_FILE = "run.json"
SHARDS_DIR = "shards"
# Written at the end of a run; stale copies are removed when a folder is reused.
RESULT_FILES = ("predictions.parquet", "metrics.json", "report.md", "metrics.png")


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
        num_nonfinite_logprobs=sum(r.get("num_nonfinite_logprobs", 0) for r in rows),
    )
    if rows and rows[0]["method"] in ("calrec", "calrec_hier"):
        total = max(num_samples, 1)
        summary.update(
            format_error_rate=sum(r["num_format_errors"] for r in rows) / total,
            match_all_four_rate=sum(r["num_match_all_four"] for r in rows) / total,
            match_title_rate=sum(r["num_match_title"] for r in rows) / total,
        )
    return summary


def _select_users(examples: list[dict], config: EvalConfig, category: str) -> list[dict]:
    """Every user by id, or a uniform sample of ``max_users`` seeded by ``config.seed`` and the
    category (the same users for every method; calrec_core.user_sample)."""
    return sample_users(examples, config.max_users, config.seed, category)


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="user", disable=not enabled)


def score_users(
    examples: Sequence[dict],
    catalog: Catalog,
    methods: Sequence[str],
    config: EvalConfig,
    *,
    generator=None,
    progress=None,
) -> dict[str, list[dict]]:
    """Scores users in batches of config.user_batch_size; rows per method, user order kept."""
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    for start in range(0, len(examples), config.user_batch_size):
        batch = examples[start : start + config.user_batch_size]
        for method, batch_rows in score_batch(
            batch, catalog, methods, config, generator=generator
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
    from calrec_core.eval.generation import ItemGenerator

    (method,) = check_methods([method])
    catalog = load_catalog(data_dir, category, config)
    examples = _select_users(read_examples(data_dir, category, split), config, category)
    generator = ItemGenerator(model, tokenizer, config, mesh) if method in MODEL_METHODS else None
    with _progress(len(examples), f"{category}/{split} {method}", show_progress) as bar:
        rows = score_users(examples, catalog, [method], config, generator=generator, progress=bar)
    rows = rows[method]
    return EvalResult(method, summarize(rows), pd.DataFrame(rows))


def load_model(model_source: str):
    """(model, tokenizer): 'pretrained' Gemma weights or a trained checkpoint directory."""
    if model_source == "pretrained":
        from calrec_core.model import load_pretrained

        return load_pretrained()
    path = storage.path(model_source)
    if not path.exists():
        raise FileNotFoundError(f"model source {model_source!r}: not 'pretrained' nor a path")
    from calrec_core.model.export import load_trained

    return load_trained(path)


def training_prompt_budget(model_source: str | None) -> int | None:
    """max_input_len of the training run that exported ``model_source`` (None: not recorded,
    or not an export)."""
    if model_source is None or model_source == "pretrained":
        return None
    from calrec_core.model.export import read_model_info

    try:
        info = read_model_info(model_source)
    except FileNotFoundError:
        return None
    return info.get("train_config", {}).get("max_input_len")


def model_fingerprint(model_source: str | None, model_and_tokenizer) -> str:
    """Content fingerprint of the model that generates: its parameters (in memory), the one
    recorded in an export's model.json, or the pretrained weights file(s)."""
    from calrec_core.fingerprint import arrays_digest, file_digest, tree_digest

    if model_and_tokenizer is not None:
        from flax import nnx

        return arrays_digest(nnx.to_pure_dict(nnx.state(model_and_tokenizer[0], nnx.Param)))
    if model_source == "pretrained":
        from calrec_core.model.loading import default_source

        weights = default_source()
        return tree_digest(weights) if weights.is_dir() else file_digest(weights)
    path = storage.path(model_source)
    if not path.exists():
        raise FileNotFoundError(f"model source {model_source!r}: not 'pretrained' nor a path")
    from calrec_core.model.export import model_fingerprint as export_fingerprint

    return export_fingerprint(path)


def input_fingerprints(data_dir, category: str, split: str, model: str | None) -> dict:
    """What the shards are computed from: the split's examples, the corpus and the model."""
    from calrec_core.data.reader import CORPUS_FILE, shard_paths
    from calrec_core.fingerprint import file_digest, files_digest

    return {
        "split": files_digest(shard_paths(data_dir, category, split)),
        "corpus": file_digest(storage.path(data_dir) / category / CORPUS_FILE),
        "model": model,
    }


def _write_text(path: storage.Path, text: str) -> None:
    storage.write_atomic(path, text)  # a crash never leaves a half-written file


def _differences(previous: dict, manifest: dict) -> list[str]:
    keys = sorted(set(previous) | set(manifest))
    changed = [key for key in keys if key not in ("config", "inputs")
               and previous.get(key) != manifest.get(key)]
    for group in ("config", "inputs"):
        old, new = previous.get(group) or {}, manifest.get(group) or {}
        changed += [f"{group}.{name}" for name in sorted(set(old) | set(new))
                    if old.get(name) != new.get(name)]
    return changed


def _check_manifest(output_dir: storage.Path, manifest: dict) -> None:
    """Refuses to resume shards written under other settings or from other inputs; a folder
    without shards takes the new manifest (and loses any stale results)."""
    manifest = json.loads(json.dumps(manifest))  # as read back: tuples become lists
    path = output_dir / MANIFEST_FILE
    has_shards = any((output_dir / SHARDS_DIR).glob("*.parquet"))
    previous = None
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            previous = {"corrupt": True}
    if previous == manifest:
        return
    if previous is not None and has_shards:
        raise StaleOutputError(
            f"{output_dir} holds results computed with other settings or inputs (changed: "
            f"{', '.join(_differences(previous, manifest))}); use a new --output or delete it")
    if has_shards:
        raise StaleOutputError(f"{output_dir} holds shards without {MANIFEST_FILE}; use a new "
                               "--output or delete it")
    for name in RESULT_FILES:
        (output_dir / name).unlink(missing_ok=True)
    _write_text(path, json.dumps(manifest, indent=2, sort_keys=True))


def _write_parquet(rows: list[dict], path: storage.Path) -> None:
    import io

    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame(rows).to_parquet(buffer, index=False)
    storage.write_atomic(path, buffer.getvalue())


def _read_parquet(path: storage.Path):
    import pandas as pd

    with storage.open_read(path) as stream:
        return pd.read_parquet(stream)


def preset_name(config: EvalConfig) -> str:
    """The preset a config is, or the nearest one and the fields that differ from it."""
    best, best_changes = "custom", None
    for name in ("paper", "demo", "tiny"):
        preset = dataclasses.asdict(EvalConfig.preset(name))
        changes = [f"{key}={value}" for key, value in dataclasses.asdict(config).items()
                   if preset.get(key) != value]
        if best_changes is None or len(changes) < len(best_changes):
            best, best_changes = name, changes
    return f"{best} ({', '.join(best_changes)})" if best_changes else best


@locks_folder("output_dir", "evaluate")
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
    preset: str | None = None,
    model_label: str | None = None,
) -> dict:
    """Evaluates methods on one category/split; writes outputs (module docstring); returns
    the metrics.json content. Needs model_source ('pretrained' or a checkpoint path) or a
    loaded (model, tokenizer) for the generative methods. ``preset`` names the settings in
    the report (default: inferred from ``config``); ``model_label`` names the model there
    (default: 'pretrained' or the checkpoint folder's name)."""

    from calrec_core.data import read_examples
    from calrec_core.eval.generation import ItemGenerator
    from calrec_core.eval.report import write_run_report

    config = (config or EvalConfig.demo()).with_training_budget(
        training_prompt_budget(model_source))
    methods = check_methods(methods)
    output_dir = storage.path(output_dir)
    shard_dir = output_dir / SHARDS_DIR
    needs_model = any(m in MODEL_METHODS for m in methods)
    if needs_model and model_source is None and model_and_tokenizer is None:
        raise ValueError(f"methods {methods} need --model ('pretrained' or a checkpoint dir)")
    if needs_model:
        model_label = model_label or _model_label(model_source, model_and_tokenizer)
    else:
        model_label = None
    catalog = load_catalog(data_dir, category, config)
    examples = _select_users(read_examples(data_dir, category, split), config, category)
    fingerprint = model_fingerprint(model_source, model_and_tokenizer) if needs_model else None
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"--output {output_dir} is a file, not a folder")
    shard_dir.mkdir(parents=True, exist_ok=True)
    _check_manifest(output_dir, {
        "category": category, "split": split, "model": model_label,
        "config": dataclasses.asdict(config),
        "inputs": input_fingerprints(data_dir, category, split, fingerprint),
    })
    generator = None
    rows: dict[str, list[dict]] = {m: [] for m in methods}
    num_shards = max(1, -(-len(examples) // config.shard_size))
    with _progress(len(examples), f"{category}/{split}", show_progress) as bar:
        for shard in range(num_shards):
            start = shard * config.shard_size
            shard_examples = examples[start : start + config.shard_size]
            paths = {m: shard_dir / f"{m}-{shard:05d}-of-{num_shards:05d}.parquet"
                     for m in methods}
            todo = [m for m in methods if not paths[m].is_file()]
            if todo and generator is None and any(m in MODEL_METHODS for m in todo):
                model, tokenizer = model_and_tokenizer or load_model(model_source)
                generator = ItemGenerator(model, tokenizer, config)
            fresh = score_users(shard_examples, catalog, todo, config,
                                generator=generator) if todo else {}
            for method in methods:
                if method in fresh:
                    _write_parquet(fresh[method], paths[method])
                    rows[method].extend(fresh[method])
                else:
                    rows[method].extend(_read_parquet(paths[method]).to_dict("records"))
            bar.update(len(shard_examples))
    result = {
        "category": category,
        "split": split,
        "preset": preset or preset_name(config),
        "model": model_label,
        "corpus_size": catalog.size,
        "config": dataclasses.asdict(config),
        "metric_columns": metric_columns(),
        "levers": quality_levers(config, catalog, model_source),
        "methods": {m: summarize(rows[m]) for m in methods},
    }
    all_rows = [row for m in methods for row in rows[m]]
    _write_parquet(all_rows, output_dir / "predictions.parquet")
    _write_text(output_dir / "metrics.json", json.dumps(result, indent=2))
    write_run_report(result, output_dir)
    return result


def _model_label(model_source: str | None, model_and_tokenizer) -> str:
    if model_source is None:
        return "in-memory model"
    return "pretrained" if model_source == "pretrained" else storage.path(model_source).name

"""``run_experiment``: the paper's recipe on one machine, resumable, within a time budget.

Layout of the output folder::

    experiment.json             the ExperimentConfig (a rerun must match it)
    raw/                        links to each category's raw files (from one or more --data)
    data/                       the ingested data (calrec ingest), reused when present
    probe/                      throwaway runs that time a step and a test user (budget only)
    plan.json                   steps, selection cadence and test users (plan.py)
    stage1/<run>/               Stage I runs: calrec, no_contrastive
    stage2/<category>/<run>/    Stage II runs: calrec, no_contrastive, no_stage1
    eval/<category>/<method>/   test-split evaluations of every variant and baseline
    timing.json                 wall time, tokens/s and MFU of each phase
    jax_cache/                  JAX's persistent compilation cache, shared by the runs
    report.md, report.html, report.json, report.png, losses-<n>.png
                                the side-by-side comparison and loss curves (report.py)

Every phase is the same core call the pipeline components make (run_ingest, then steps.py's
train_stage and evaluate_methods); each resumes on its own, so rerunning the command continues.
"""

from __future__ import annotations

import json
import logging
import pathlib
from collections.abc import Sequence

from calrec_core.experiment.config import ExperimentConfig, roles_to_dict
from calrec_core.experiment.plan import (
    Plan,
    Timings,
    make_plan,
    stage1_runs,
    stage2_runs,
    unbudgeted_plan,
)
from calrec_core.experiment.timing import TimingLog, mfu
from calrec_core.folder_lock import locks_folder

logger = logging.getLogger(__name__)

CONFIG_FILE = "experiment.json"
PLAN_FILE = "plan.json"
TIMING_FILE = "timing.json"
COMPILATION_CACHE = "jax_cache"


def _use_compilation_cache(directory: pathlib.Path) -> None:
    """Stage runs of one shape (every Stage II run, the probe and its stage) share compiled
    programs; a cache the caller already chose is kept."""
    import jax

    from calrec_core.model.compilation_cache import enable_compilation_cache

    if not jax.config.jax_compilation_cache_dir:
        enable_compilation_cache(directory, min_compile_seconds=0.5)


@locks_folder("output_dir", "experiment")
def run_experiment(config: ExperimentConfig, raw_dirs: Sequence, output_dir, *,
                   ingested_dir=None, show_progress: bool = True,
                   ingest_only: bool = False) -> dict:
    """Runs (or resumes) every phase (module docstring); returns the report's content.
    ``ingest_only`` stops after ingestion (to carry the data to a machine without Beam)."""
    from calrec_core.experiment.report import write_experiment_report

    output = pathlib.Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    _check_same_config(output, config)
    _use_compilation_cache(output / COMPILATION_CACHE)
    timing = TimingLog(output / TIMING_FILE)
    data_dir = (pathlib.Path(ingested_dir) if ingested_dir is not None
                else _ingest(config, raw_dirs, output, timing))
    if ingest_only:
        return {"data": str(data_dir)}
    plan = _plan(config, data_dir, output, timing)
    stage1 = {}
    for run in stage1_runs(config):
        stage1[run] = _train(timing, f"stage1/{run}", config, plan, output / "stage1" / run,
                             data_dir, variant=run, stage=1)
    models: dict[str, dict[str, str]] = {}
    for category in config.eval_categories:
        models[category] = {}
        for run in stage2_runs(config):
            init = None if run == "no_stage1" else stage1[run]
            models[category][run] = _train(
                timing, f"stage2/{category}/{run}", config, plan,
                output / "stage2" / category / run, data_dir, variant=run, stage=2,
                category=category, init=init)
        if "no_stage2" in config.variants:
            models[category]["no_stage2"] = stage1["calrec"]
    evaluations = {category: _evaluate_category(config, plan, data_dir, output, category,
                                                models[category], timing, show_progress)
                   for category in config.eval_categories}
    return write_experiment_report(config, plan, evaluations, timing.phases, output)


def _check_same_config(output: pathlib.Path, config: ExperimentConfig) -> None:
    path = output / CONFIG_FILE
    wanted = config.to_dict()
    # Through JSON so tuples and lists compare alike.
    wanted = json.loads(json.dumps(wanted))
    if path.is_file():
        found = json.loads(path.read_text(encoding="utf-8"))
        if found != wanted:
            changed = sorted(_differences(wanted, found))
            raise ValueError(f"{output} holds an experiment with other settings ({changed}); "
                             "rerun with the same settings to resume, or use a new --output")
        return
    path.write_text(json.dumps(wanted, indent=2, sort_keys=True), encoding="utf-8")


def _differences(wanted: dict, found: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested mappings."""
    names = []
    for key in sorted(set(wanted) | set(found)):
        first, second = wanted.get(key), found.get(key)
        if isinstance(first, dict) and isinstance(second, dict):
            names += _differences(first, second, f"{prefix}{key}.")
        elif first != second:
            names.append(f"{prefix}{key}")
    return names


def link_raw_files(raw_dirs: Sequence, categories: Sequence[str], target: pathlib.Path) -> None:
    """Links each category's raw files, found in the first of ``raw_dirs`` that has them, into
    one folder (ingestion reads one). A category found nowhere fails with every place named."""
    target.mkdir(parents=True, exist_ok=True)
    for category in categories:
        found = None
        for folder in map(pathlib.Path, raw_dirs):
            reviews = [folder / f"{category}_5.json{s}" for s in (".gz", "")]
            if any(path.is_file() for path in reviews):
                found = folder
                break
        if found is None:
            raise FileNotFoundError(f"no {category}_5.json[.gz] in any of "
                                    f"{[str(d) for d in raw_dirs]}")
        for stem in (f"{category}_5", f"meta_{category}"):
            for suffix in (".gz", ""):
                source = found / f"{stem}.json{suffix}"
                link = target / source.name
                if source.is_file() and not link.exists():
                    link.symlink_to(source.resolve())


def _ingest(config: ExperimentConfig, raw_dirs: Sequence, output: pathlib.Path,
            timing: TimingLog) -> pathlib.Path:
    from calrec_core.data import run_ingest

    data_dir = output / "data"
    roles_file = data_dir / "roles.json"
    roles = roles_to_dict(config.roles)
    if (data_dir / "stats.json").is_file() and roles_file.is_file() and json.loads(
            roles_file.read_text(encoding="utf-8")) == json.loads(json.dumps(roles)):
        return data_dir
    if not raw_dirs:
        raise ValueError("no --data folder with raw files, and no ingested data to reuse")
    raw = output / "raw"
    link_raw_files(raw_dirs, [c.name for c in config.roles.categories], raw)
    with timing.phase("ingest"):
        run_ingest(raw, None, data_dir, config=config.roles)
    roles_file.write_text(json.dumps(roles, indent=2, sort_keys=True), encoding="utf-8")
    return data_dir


def _plan(config: ExperimentConfig, data_dir, output: pathlib.Path, timing: TimingLog) -> Plan:
    path = output / PLAN_FILE
    if path.is_file():
        return Plan.from_dict(json.loads(path.read_text(encoding="utf-8")))
    if config.budget_minutes <= 0:
        plan = unbudgeted_plan(config)
    else:
        with timing.phase("step_shapes") as record:
            overrides = _shared_steps(config, data_dir)
            record.update(overrides)
        plan = make_plan(config, _probe(config, data_dir, output, timing, overrides),
                         _test_users(data_dir, config.eval_categories[0]), overrides)
    path.write_text(json.dumps(plan.to_dict(), indent=2, sort_keys=True), encoding="utf-8")
    logger.info("plan: %s", plan)
    return plan


def _shared_steps(config: ExperimentConfig, data_dir) -> dict:
    """TrainConfig settings that let every stage run of a budgeted experiment share compiled
    steps: resolved microbatches (and remat), one ladder of packed step shapes for Stage I and
    every Stage II, and loss weights as step inputs (shared_program). {} without packing."""
    train = config.train
    if not train.packing:
        return {}
    from calrec_core.model.sharding import batch_multiple, make_mesh
    from calrec_core.train.step import resolve_microbatches
    from calrec_core.train.stream import shared_ladder

    if train.model == "tiny":
        from calrec_core.model.tokenizer import make_tiny_tokenizer
        from calrec_core.train.models import TINY_VOCAB

        tokenizer = make_tiny_tokenizer(TINY_VOCAB)
    else:
        from calrec_core.model.loading import load_pretrained_tokenizer

        tokenizer = load_pretrained_tokenizer()
    mesh = make_mesh(data=-1, fsdp=train.fsdp)
    train = resolve_microbatches(train, mesh)  # the worst case: every user at full length
    ladder = shared_ladder(data_dir, train, tokenizer, batch_multiple(mesh))
    return {"microbatches": train.microbatches, "remat": train.remat,
            "step_shapes": [list(level) for level in ladder.packed_levels()],
            "shared_program": True}


def _test_users(data_dir, category: str) -> int:
    from calrec_core.data import read_examples

    return len(read_examples(data_dir, category, "test"))


def _probe(config: ExperimentConfig, data_dir, output: pathlib.Path,
           timing: TimingLog, overrides: dict) -> Timings:
    """Times ``probe_steps`` steps of the first stage the experiment runs, and test users with
    the untrained model, in throwaway folders; one-time costs (compiles, model load, BM25
    build) are measured apart from the steady step and per-user times."""
    import time

    from calrec_core.data import read_examples
    from calrec_core.eval.catalog import load_catalog
    from calrec_core.eval.evaluate import score_users
    from calrec_core.eval.generation import ItemGenerator
    from calrec_core.experiment.steps import stage_train_config
    from calrec_core.train.metrics import read_metrics
    from calrec_core.train.models import fresh_model
    from calrec_core.train.stages import run_stage1, run_stage2
    from calrec_core.user_sample import sample_users

    probe = stage_train_config(config, 1, overrides=overrides).replace(
        stage1_steps=config.probe_steps, stage2_steps=config.probe_steps,
        eval_every=config.probe_steps, checkpoint_every=config.probe_steps, log_every=1,
        selection_metric="valid_loss", eval_max_users=min(config.train.eval_max_users or 8, 8))
    began = time.perf_counter()
    if stage1_runs(config):
        run_stage1(data_dir, output / "probe" / "train", probe)
    else:
        run_stage2(data_dir, config.eval_categories[0], None, output / "probe" / "train", probe)
    seconds = [r["seconds"] for r in read_metrics(output / "probe" / "train")
               if r["kind"] == "train"]
    step = min(seconds[1:])
    # Only the first step compiles: the probe's few steps of one stage take one shape (a
    # second level would show as a second slow step, counted as another compile).
    compiles = [s - step for s in seconds if s > 2 * step] or [seconds[0] - step]
    train_probe = time.perf_counter() - began
    # What the run took besides its steps: model load, set-up, checkpoint, export.
    run_setup = max(0.0, train_probe - sum(seconds))

    category = config.eval_categories[0]
    eval_config = config.eval.with_training_budget(config.train.max_input_len)
    began = time.perf_counter()
    model, tokenizer = fresh_model(config.train)
    load = time.perf_counter() - began
    began = time.perf_counter()
    catalog = load_catalog(data_dir, category, eval_config)
    catalog_seconds = time.perf_counter() - began
    # One full user batch after a first one that compiles: the steady time per user.
    count = max(config.probe_users, eval_config.user_batch_size)
    users = sample_users(read_examples(data_dir, category, "test"), 2 * count, eval_config.seed,
                         category)
    generator = ItemGenerator(model, tokenizer, eval_config)
    began = time.perf_counter()
    score_users(users[:count], catalog, ["calrec"], eval_config, generator=generator)
    first = time.perf_counter() - began
    began = time.perf_counter()
    steady = users[count:] or users[:count]
    score_users(steady, catalog, ["calrec"], eval_config, generator=generator)
    eval_user = (time.perf_counter() - began) / len(steady)
    eval_compile = max(0.0, first - eval_user * count)
    timing.record("probe", seconds=train_probe + load + catalog_seconds + first
                  + eval_user * len(steady), step_seconds=step,
                  compile_seconds=sum(compiles), step_programs=len(compiles),
                  eval_user_seconds=eval_user,
                  one_time={"train_compiles": sum(compiles), "run_setup": run_setup,
                            "model_load": load, "bm25_build": catalog_seconds,
                            "eval_compiles": eval_compile})
    return Timings(step=step, compile=sum(compiles) / len(compiles), eval_user=eval_user,
                   elapsed=timing.total_seconds(), eval_setup=load + catalog_seconds + eval_compile,
                   programs_compiled=len(compiles), run_setup=run_setup)


def _train(timing: TimingLog, phase: str, config: ExperimentConfig, plan: Plan,
           run_dir: pathlib.Path, data_dir, *, variant: str, stage: int,
           category: str | None = None, init: str | None = None) -> str:
    """One stage run of ``variant`` with the plan's steps and selection cadence, timed."""
    from calrec_core.experiment.steps import train_stage
    from calrec_core.train.metrics import read_metrics

    planned = plan.stage1_steps if stage == 1 else plan.stage2_steps
    every = plan.stage1_eval_every if stage == 1 else plan.stage2_eval_every
    with timing.phase(phase) as record:
        result = train_stage(config, stage, data_dir, run_dir, category=category, init=init,
                             variant=variant, steps=planned, eval_every=every,
                             selection_users=plan.selection_users,
                             overrides=plan.train_overrides)
        steps = [r for r in read_metrics(run_dir) if r["kind"] == "train"]
        steady = steps[1:] or steps
        record.update(
            steps=planned,
            selected_step=result.selected_step,
            selection=f"{result.metric_name} {result.best_metric:.4f}",
            step_seconds=_mean([r["seconds"] for r in steady]),
            first_step_seconds=steps[0]["seconds"] if steps else None,
            tokens_per_s=_mean([r["tokens_per_s"] for r in steady]),
            padding_fraction=_mean([r["padding_fraction"] for r in steady
                                    if "padding_fraction" in r]),
        )
        record.update(_utilisation(result.checkpoint_dir, record["tokens_per_s"]))
    return result.checkpoint_dir


def _utilisation(checkpoint_dir: str, tokens_per_s: float | None) -> dict:
    import jax

    from calrec_core.model.export import config_from, read_model_info

    params = config_from(read_model_info(checkpoint_dir)["architecture"]).num_non_embedding_params
    device = jax.devices()[0]
    return {"device": device.device_kind, "devices": jax.device_count(),
            "non_embedding_params": params,
            "mfu": mfu(tokens_per_s or 0.0, params, device.device_kind, jax.device_count())}


def _mean(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _evaluate_category(config: ExperimentConfig, plan: Plan, data_dir, output: pathlib.Path,
                       category: str, models: dict[str, str], timing: TimingLog,
                       show_progress: bool) -> dict[str, str]:
    """Every variant and baseline on the same test users; {method: evaluation folder}."""
    from calrec_core.experiment.steps import evaluate_methods

    evaluated = evaluate_methods(
        config, data_dir, category, {variant: models[variant] for variant in config.variants},
        output / "eval" / category, split="test", max_users=plan.test_users,
        show_progress=show_progress,
        phase=lambda method: timing.phase(f"eval/{category}/{method}"))
    return {method: evaluation.folder for method, evaluation in evaluated.items()}

"""The steps of an experiment, shared by ``calrec experiment`` (run.py) and the KFP components.

Each step takes the ExperimentConfig and plain folders, so a component only moves artifacts:

    as_parameter(config)       the experiment as the pipeline's one parameter
    pipeline_views(config)     the part of the experiment each pipeline step reads
    check_compiled_categories  run-time roles against the categories a pipeline was built for
    stage_train_config         the TrainConfig of one stage run of a variant
    train_stage                Stage I or Stage II of a variant (run_stage1 / run_stage2)
    loss_curves_html           one stage run's loss curves as a self-contained page
    loss_curve_sections        loss-curve plots of several runs as Markdown sections
    evaluate_methods           every trained model and baseline on the same users
    render_report              Markdown and self-contained HTML over evaluation folders
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import json
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from calrec_core import storage
from calrec_core.eval.config import MODEL_RANKINGS
from calrec_core.eval.report_html import inline_png, markdown_page
from calrec_core.experiment.config import BASELINES, VARIANTS, ExperimentConfig


def _without_none(value):
    if isinstance(value, dict):
        return {key: _without_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_without_none(item) for item in value]
    return "none" if value is None else value


def as_parameter(config: ExperimentConfig) -> dict[str, Any]:
    """``config.to_dict()`` as a KFP parameter value: JSON types only, with None (which KFP's
    parameter defaults refuse) as "none", which from_dict reads back as None."""
    return _without_none(config.to_dict())


def pipeline_views(config: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """{step: the part of the experiment it reads} for the pipeline's ingest, train and evaluate
    steps, so that each step's cache key changes only with what it uses (new evaluation
    settings reuse the cached ingestion and training). 'ingest' is the roles mapping
    (roles_config_from_dict: the ingest image has no JAX to import the experiment with); the
    others read back with ExperimentConfig.from_dict (sections left out: the preset's)."""
    full = as_parameter(config)
    sections = {"preset": full["preset"], "roles": full["roles"], "train": full["train"]}
    # Model selection evaluates with the eval section (all of it but the test users' cap and
    # the result sharding), unless selection_eval names a preset.
    selection = {name: value for name, value in full["eval"].items()
                 if name not in ("max_users", "shard_size")}
    return {
        "ingest": full["roles"],
        "train": {**sections, "eval": selection,
                  "experiment": {"selection_eval": full["experiment"]["selection_eval"]}},
        "evaluate": {**sections, "eval": full["eval"],
                     "experiment": {"baselines": full["experiment"]["baselines"]}},
    }


def check_compiled_categories(config: ExperimentConfig, categories: Sequence[str]) -> None:
    """Raises unless every category a pipeline was compiled for (one Stage II and evaluation
    each) has role 'eval' in the run's experiment, naming the way out."""
    evaluable = sorted(config.eval_categories)
    missing = [name for name in categories if name not in evaluable]
    if missing:
        raise ValueError(
            f"the pipeline was compiled for evaluation categories {list(categories)}, but the "
            f"run's roles give {missing} no 'eval' role (eval categories there: {evaluable}); "
            "recompile with `calrec pipeline compile --roles <that file>` or pass matching roles"
        )


def stage_name(stage: int, category: str | None = None) -> str:
    """'train-stage1' or 'train-stage2-<category>': a stage run's name in folders and logs."""
    return "train-stage1" if stage == 1 else f"train-stage2-{category}"


def stage_train_config(config: ExperimentConfig, stage: int, variant: str = "calrec",
                       steps: int | None = None, eval_every: int | None = None,
                       selection_users: int | None = None,
                       overrides: Mapping[str, Any] | None = None):
    """The TrainConfig of one stage run of ``variant``. ``steps`` replaces the stage's step count
    and ``eval_every`` the selection (and checkpoint) cadence, as a budget plan sizes them;
    None keeps ``config.train``'s."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose one of {list(VARIANTS)}")
    train = config.train
    if steps is not None:
        train = train.replace(**{f"stage{stage}_steps": steps})
    if eval_every is not None:
        train = train.replace(eval_every=eval_every, checkpoint_every=eval_every,
                              log_every=min(train.log_every, eval_every))
    if selection_users is not None:  # A budget plan's selection sample.
        train = train.replace(eval_max_users=selection_users)
    if overrides:  # A budget plan's shared step shapes and resolved microbatches.
        train = train.replace(**{name: (tuple(map(tuple, value)) if name == "step_shapes"
                                        else value) for name, value in overrides.items()})
    if variant == "no_contrastive":
        train = train.replace(alpha=0.0, beta=0.0)
    if train.lr_schedule != "constant":
        # A decaying schedule spans this stage's steps.
        stage_steps = train.stage1_steps if stage == 1 else train.stage2_steps
        train = train.replace(lr_decay_steps=max(1, stage_steps - train.warmup_steps))
    return train


def train_stage(config: ExperimentConfig, stage: int, data_dir, output_dir, *,
                category: str | None = None, init: str | None = None, variant: str = "calrec",
                steps: int | None = None, eval_every: int | None = None,
                selection_users: int | None = None,
                overrides: Mapping[str, Any] | None = None):
    """Stage I (every category at the mixture weights) or Stage II (``category`` from the Stage I
    export ``init``) of ``variant``; resumes from ``output_dir``. Returns the StageResult."""
    from calrec_core.train.stages import run_stage1, run_stage2

    train = stage_train_config(config, stage, variant, steps=steps, eval_every=eval_every,
                               selection_users=selection_users, overrides=overrides)
    if stage == 1:
        if category or init:
            raise ValueError("Stage I trains on every category from the pretrained weights: "
                             "it takes no category and no init model")
        return run_stage1(data_dir, output_dir, train, config.selection_eval_config())
    if not category:
        raise ValueError("Stage II needs the category to fine-tune on")
    # "w/o Multi-Category Joint FT" starts Stage II from the pretrained weights.
    if (variant == "no_stage1") != (init is None):
        wanted = "no init model" if variant == "no_stage1" else "the Stage I model as init"
        raise ValueError(f"Stage II of variant {variant!r} needs {wanted}")
    return run_stage2(data_dir, category, init, output_dir, train, config.selection_eval_config())


def image_page(path, title: str) -> str:
    """An HTML page holding the PNG at ``path`` inline under ``title``."""
    return (f"<html><body><h2>{html.escape(title)}</h2>"
            f"<img src='{inline_png(path)}'></body></html>")


def loss_curves_html(run_dir, label: str) -> str:
    """A stage run's L_NIG and L_TT curves as a self-contained HTML page."""
    from calrec_core.train.metrics import plot_losses

    with tempfile.TemporaryDirectory() as scratch:
        plot = plot_losses([run_dir], pathlib.Path(scratch) / "losses.png", labels=[label])
        return image_page(plot, f"{label} training losses")


def loss_curve_sections(groups: Mapping[str, Mapping[str, Any]],
                        folder) -> tuple[list[str], dict[str, storage.Path]]:
    """Markdown lines of a 'Training losses' section, one plot per group ({title: {run label:
    run folder}}) written into ``folder`` as losses-<n>.png, and {file name: plot path}.
    Runs without training records are left out; nothing at all gives ([], {})."""
    from calrec_core.train.metrics import plot_losses, read_metrics

    lines: list[str] = []
    plots: dict[str, storage.Path] = {}
    for title, runs in groups.items():
        runs = {label: run for label, run in runs.items()
                if any(r["kind"] == "train" for r in read_metrics(run))}
        if not runs:
            continue
        name = f"losses-{len(plots) + 1}.png"
        plots[name] = plot_losses(list(runs.values()), storage.path(folder) / name,
                                  labels=list(runs))
        lines += [f"### {title}", "", f"![training losses, {title}]({name})", ""]
    return (["## Training losses", "", *lines] if lines else []), plots


@dataclasses.dataclass(frozen=True)
class MethodEvaluation:
    """One method's evaluation on one category."""

    label: str  # 'calrec' (or another variant), 'pretrained' or 'lir'.
    folder: str  # Its run_evaluation folder (metrics.json, predictions, report).
    metrics: dict  # Its summary: metrics.json's methods entry.


def _untrained_model(config: ExperimentConfig) -> dict:
    """run_evaluation's model arguments for the 'pretrained' baseline: the pretrained weights
    (a source the evaluation fingerprints), or for the tiny model its seeded random
    initialisation, which is what the variants start from."""
    if config.train.model == "tiny":
        from calrec_core.train.models import fresh_model

        return {"model_and_tokenizer": fresh_model(config.train)}
    return {"model_source": "pretrained"}


def evaluate_methods(
    config: ExperimentConfig,
    data_dir,
    category: str,
    models: Mapping[str, str],
    output_dir,
    *,
    split: str = "test",
    max_users: int | None = None,
    show_progress: bool = True,
    phase: Callable[[str], contextlib.AbstractContextManager[dict]] | None = None,
) -> dict[str, MethodEvaluation]:
    """Every trained model of ``models`` ({variant: exported model folder}) and every baseline
    of ``config.baselines`` on the same users of ``category``, one run_evaluation folder each
    under ``output_dir/<label>``: a variant through method 'calrec' under its own name,
    'pretrained' as the untrained model through method 'calrec', 'lir' as method 'lir'; the
    'calrec' model is also ranked by each of ``config.eval.rankings`` (label = method). Every
    method gets the prompt budget the variants trained with. ``max_users`` (None: the eval
    config's) caps the users; ``phase(label)``, if given, wraps each evaluation and receives
    its user count. Returns {label: MethodEvaluation}, variants first, in the given orders."""
    from calrec_core.eval.evaluate import run_evaluation

    unknown = sorted(set(models) - set(VARIANTS))
    if unknown:
        raise ValueError(f"models of unknown variants {unknown}; variants are {list(VARIANTS)}")
    eval_config = config.eval
    if max_users is not None:
        eval_config = dataclasses.replace(eval_config, max_users=max_users)
    eval_config = eval_config.with_training_budget(config.train.max_input_len)
    runs: dict[str, dict] = {}
    for variant, model in models.items():
        # The report reads "calrec [fine-tuned]", "calrec [no_stage1]", "calrec [pretrained]".
        runs[variant] = {"methods": ["calrec"], "model_source": model,
                         "model_label": "fine-tuned" if variant == "calrec" else variant}
        if variant == "calrec":  # the fine-tuned model's other rankings, beside its sampler
            for ranking in eval_config.rankings:
                runs[ranking] = {"methods": [ranking], "model_source": model,
                                 "model_label": "fine-tuned"}
    for baseline in config.baselines:
        runs[baseline] = ({"methods": ["lir"]} if baseline == "lir"
                          else {"methods": ["calrec"], **_untrained_model(config)})
    evaluated = {}
    for label, arguments in runs.items():
        folder = storage.path(output_dir) / label
        with (phase(label) if phase else contextlib.nullcontext({})) as record:
            result = run_evaluation(data_dir, category, folder, split=split, config=eval_config,
                                    show_progress=show_progress, **arguments)
            (metrics,) = result["methods"].values()
            record["users"] = metrics["num_users"]
        evaluated[label] = MethodEvaluation(label, str(folder), metrics)
    return evaluated


def method_order(labels) -> list[str]:
    """Trained variants first (calrec leading: the t-tests compare every method with the
    first; its model rankings right after it), then the baselines, each in the order of
    VARIANTS and BASELINES."""
    order = [VARIANTS[0], *MODEL_RANKINGS, *VARIANTS[1:], *BASELINES]
    return sorted(labels, key=lambda label: (order.index(label) if label in order
                                             else len(order), label))


@dataclasses.dataclass(frozen=True)
class RenderedReport:
    """A Table 2-style report as texts: Markdown (tables only) and HTML (plot inlined)."""

    markdown: str
    html: str


def render_report(evaluation_dirs: Sequence,
                  training_runs: Mapping[str, Any] | None = None) -> RenderedReport:
    """The cross-category report over folders written by evaluate_methods (any order): per
    category, the methods in report order; ``training_runs`` ({label: run folder}, e.g. the
    training steps' work folders) adds their loss curves to the HTML. Artifact viewers show
    one file, so the Markdown drops the plots and the HTML is the Markdown rendered with every
    plot inlined."""
    from calrec_core.eval.report import write_report

    found = []
    for folder in map(storage.path, evaluation_dirs):
        for path in folder.glob("*/metrics.json"):
            category = json.loads(path.read_text(encoding="utf-8"))["category"]
            found.append((category, path.parent.name, path))
    if not found:
        raise ValueError(f"no evaluations (*/metrics.json) in {[str(d) for d in evaluation_dirs]}")
    order = {label: index for index, label in enumerate(method_order({f[1] for f in found}))}
    paths = [path for _, _, path in sorted(found, key=lambda f: (f[0], order[f[1]], str(f[2])))]
    with tempfile.TemporaryDirectory() as scratch:
        written = write_report(paths, scratch)
        plot = written["plot"]
        markdown = written["markdown"].read_text(encoding="utf-8")
        losses, plots = loss_curve_sections({"Every stage run": training_runs or {}}, scratch)
        page = markdown_page("\n".join([markdown, "", *losses]), "CALRec evaluation report",
                             {plot.name: plot, **plots})
    markdown = markdown.replace(f"![metrics]({plot.name})", "").rstrip() + "\n"
    return RenderedReport(markdown, page)

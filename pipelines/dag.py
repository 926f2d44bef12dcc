"""The CALRec DAG: ingest -> Stage I -> Stage II per category -> evaluate per category -> report.

The per-category fan-out is expanded when the pipeline is built (KFP's local runner cannot be
relied on for ParallelFor), so ``build_pipeline`` takes the evaluation categories and returns a
``@dsl.pipeline`` function. Everything else (roles, presets, loss weights, sampling) is a
pipeline parameter whose default comes from the named preset.
"""


import dataclasses
from collections.abc import Mapping, Sequence
from typing import NamedTuple

from kfp.dsl import HTML, Markdown

from components import MAX_REPORT_CATEGORIES, ImageSet, make_components

PIPELINE_NAME = "calrec"
BASELINES = ("lir", "pretrained")
# Default accelerator per accelerator family, for Vertex AI's machine spec.
DEFAULT_ACCELERATOR_TYPE = {"cpu": "", "gpu": "NVIDIA_L4", "tpu": "TPU_V5_LITEPOD"}


class PipelineOutputs(NamedTuple):
    """What a run returns: the Table 2-style report."""

    report: Markdown  # Tables per category, CALRec against the baselines.
    report_html: HTML  # The same with the opt/pes bar plot inlined.


def eval_categories(roles: Mapping) -> list[str]:
    """Names of the categories whose role is ``eval`` (the ones Stage II and evaluation cover)."""
    from calrec_core.data import roles_config_from_dict

    config = roles_config_from_dict(dict(roles), source="roles")
    return [category.name for category in config.categories if category.role == "eval"]


def _check_categories(categories: Sequence[str], roles: Mapping) -> list[str]:
    categories = list(categories)
    if not categories:
        raise ValueError("build_pipeline needs at least one evaluation category")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories named twice: {categories}")
    if len(categories) > MAX_REPORT_CATEGORIES:
        raise ValueError(
            f"{len(categories)} categories; the report step takes at most {MAX_REPORT_CATEGORIES}"
        )
    allowed = eval_categories(roles)
    wrong = [name for name in categories if name not in allowed]
    if wrong:
        raise ValueError(f"categories {wrong} do not have role 'eval' in the roles {allowed}")
    return categories


def build_pipeline(
    categories: Sequence[str],
    roles: Mapping,
    *,
    preset: str = "demo",
    images: ImageSet | None = None,
    accelerator: str = "cpu",
    name: str = PIPELINE_NAME,
):
    """A ``@dsl.pipeline`` function over ``categories`` (each must have role 'eval' in ``roles``).

    ``roles`` is the roles mapping of configs/*.yaml and the default of the ``roles`` parameter;
    ``preset`` (tiny, demo, paper) gives every other parameter's default; ``accelerator`` (cpu,
    gpu, tpu) picks the image of the training and evaluation steps, and on gpu/tpu the
    ``accelerator_type``/``accelerator_count`` parameters request the devices on Vertex AI.
    """
    from kfp import dsl

    from calrec_core.eval.config import EvalConfig
    from calrec_core.train.config import TrainConfig

    roles = dict(roles)
    categories = _check_categories(categories, roles)
    steps = make_components(images, accelerator)
    train = TrainConfig.preset(preset)
    evaluation = EvalConfig.preset(preset)
    on_accelerator = accelerator != "cpu"

    def place(task, accelerator_type, accelerator_count):
        if on_accelerator:
            task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
        return task

    @dsl.pipeline(name=name, description="CALRec: ingest, two-stage fine-tuning, evaluation.")
    def calrec_pipeline(
        raw_data_uri: str,
        raw_data_version: str = "",
        roles: dict = roles,
        beam_args: list = [],  # noqa: B006 (KFP reads defaults from the signature)
        # Fields not exposed below come from these presets (the ones below override them).
        train_preset: str = preset,
        alpha: float = train.alpha,
        beta: float = train.beta,
        tau: float = train.temperature,
        learning_rate: float = train.learning_rate,
        batch_size: int = train.batch_size,
        stage1_steps: int = train.stage1_steps,
        stage2_steps: int = train.stage2_steps,
        train_overrides: list = [],  # noqa: B006
        eval_preset: str = preset,
        n_gen: int = evaluation.n_gen,
        n_preds: int = evaluation.n_preds,
        eval_temperature: float = evaluation.temperature,
        eval_max_users: int = evaluation.max_users or 0,
        eval_seed: int = evaluation.seed,
        split: str = "test",
        baselines: list = list(BASELINES),  # noqa: B006
        accelerator_type: str = DEFAULT_ACCELERATOR_TYPE[accelerator],
        accelerator_count: int = 1 if on_accelerator else 0,
    ) -> PipelineOutputs:
        hyperparameters = dict(
            preset=train_preset, alpha=alpha, beta=beta, temperature=tau,
            learning_rate=learning_rate, batch_size=batch_size, overrides=train_overrides,
        )
        ingest = steps.ingest(
            raw_data_uri=raw_data_uri, roles=roles, beam_args=beam_args,
            raw_data_version=raw_data_version,
        ).set_display_name("ingest")
        dataset = ingest.outputs["dataset"]
        stage1 = place(steps.train_stage1(
            dataset=dataset, steps=stage1_steps, **hyperparameters,
        ), accelerator_type, accelerator_count).set_display_name("train-stage1")
        evaluations = {}
        for category in categories:
            stage2 = place(steps.train_stage2(
                dataset=dataset, init_model=stage1.outputs["model"], category=category,
                steps=stage2_steps, **hyperparameters,
            ), accelerator_type, accelerator_count).set_display_name(f"train-stage2-{category}")
            evaluate = place(steps.evaluate(
                dataset=dataset, model=stage2.outputs["model"], category=category,
                preset=eval_preset, n_gen=n_gen, n_preds=n_preds, temperature=eval_temperature,
                max_users=eval_max_users, seed=eval_seed, split=split, baselines=baselines,
            ), accelerator_type, accelerator_count).set_display_name(f"evaluate-{category}")
            evaluations[f"evaluation_{len(evaluations)}"] = evaluate.outputs["evaluation"]
        report = steps.report(**evaluations).set_display_name("report")
        return PipelineOutputs(report.outputs["report"], report.outputs["report_html"])

    calrec_pipeline.categories = tuple(categories)
    return calrec_pipeline


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What fixes the DAG's shape and images (everything else is a run-time parameter)."""

    categories: tuple[str, ...]  # Evaluation categories, one Stage II and evaluate task each.
    roles: dict  # Roles mapping (configs/*.yaml); the default of the 'roles' parameter.
    preset: str = "demo"  # Preset giving the parameter defaults: tiny, demo or paper.
    accelerator: str = "cpu"  # cpu, gpu or tpu: image and devices of the heavy steps.
    images: ImageSet = dataclasses.field(default_factory=ImageSet)  # Images to run on.

    def build(self):
        return build_pipeline(self.categories, self.roles, preset=self.preset,
                              images=self.images, accelerator=self.accelerator)

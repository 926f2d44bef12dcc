"""The CALRec DAG: configure, and raw-data version -> import raw data -> ingest -> Stage I ->
(per category: Stage II -> evaluate) -> report over the collected evaluations.

The experiment (roles, training, evaluation, baselines: one ExperimentConfig) is ONE pipeline
parameter, ``experiment``, whose default is the experiment the pipeline was compiled with; the
configure step validates it and hands each step the part it reads. The evaluation categories
are fixed when the pipeline is built (a ParallelFor over them, collected into the report), and
the configure step refuses a run-time experiment whose roles do not make them 'eval'. The
other parameters are operational: data, Beam, checkpoints, resources, timeouts. The pipeline
trains the experiment's ``calrec`` variant (the ablations are ``calrec experiment``'s).
"""


import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

from kfp.dsl import HTML, Markdown

from calrec_core.experiment import ExperimentConfig
from calrec_core.experiment.steps import as_parameter
from components import STEP_ACCELERATOR, TRAINING_MODES, ImageSet, make_components
from components.runtime import LOCATION_PLACEHOLDER, PROJECT_PLACEHOLDER

PIPELINE_NAME = "calrec"
# Default accelerator of the accelerated pipeline steps per step accelerator family
# (components.STEP_ACCELERATOR: a "tpu" build's steps run on GPUs, its training jobs on TPUs).
DEFAULT_ACCELERATOR_TYPE = {"cpu": "", "gpu": "NVIDIA_L4"}
# CPU and memory of the training and evaluation steps per step accelerator family (Vertex AI
# runs each step on the smallest machine type with these and the accelerators):
# n2-standard-8, g2-standard-8 (one L4).
DEFAULT_HEAVY_RESOURCES = {"cpu": ("8", "32G"), "gpu": ("8", "32G")}
# The same for the raw-data version and ingest steps (DirectRunner works in the container).
DEFAULT_INGEST_RESOURCES = ("4", "16G")
# Custom-job training: the launcher task's CPU and memory (it waits, then copies the export).
LAUNCHER_RESOURCES = ("2", "8G")
# Custom-job training: the workers' default machine type, accelerator type and count per
# accelerator family (one host each; raise training_replica_count or training_tpu_topology).
DEFAULT_TRAINING_MACHINE = {"cpu": ("n2-standard-8", "", 0),
                            "gpu": ("g2-standard-8", "NVIDIA_L4", 1),
                            "tpu": ("ct5lp-hightpu-4t", "", 0)}
# Retry back-off of training and evaluation: 60 s, then doubling, retried within 2 h.
RETRY_BACKOFF = {"backoff_duration": "60s", "backoff_factor": 2.0,
                 "backoff_max_duration": "7200s"}


class PipelineOutputs(NamedTuple):
    """What a run returns: the Table 2-style report."""

    report: Markdown  # Tables per category, CALRec against the baselines.
    report_html: HTML  # The same with the opt/pes bar plot inlined.


def compiled_categories(pipeline_spec: Mapping) -> list[str]:
    """The evaluation categories a compiled spec was built for (the configure task's constant)."""
    for task in pipeline_spec["root"]["dag"]["tasks"].values():
        if task["taskInfo"]["name"] == "configure":
            value = task["inputs"]["parameters"]["eval_categories"]["runtimeValue"]["constant"]
            return list(value)
    raise ValueError("the pipeline spec has no configure task: is it a calrec pipeline?")


def compiled_experiment(pipeline_spec: Mapping) -> ExperimentConfig:
    """The experiment a compiled spec runs by default (its ``experiment`` parameter's)."""
    parameters = pipeline_spec["root"]["inputDefinitions"]["parameters"]
    if "experiment" not in parameters:
        raise ValueError("the pipeline spec has no 'experiment' parameter: recompile it")
    return ExperimentConfig.from_dict(parameters["experiment"]["defaultValue"])


def _check_categories(categories: Sequence[str], experiment: ExperimentConfig) -> list[str]:
    categories = list(categories)
    if not categories:
        raise ValueError("build_pipeline needs at least one evaluation category")
    if len(set(categories)) != len(categories):
        raise ValueError(f"categories named twice: {categories}")
    wrong = [name for name in categories if name not in experiment.eval_categories]
    if wrong:
        raise ValueError(f"categories {wrong} do not have role 'eval' in the roles "
                         f"{list(experiment.eval_categories)}")
    return categories


def check_step_accelerator_type(accelerator_type) -> None:
    """Refuses a TPU for the pipeline's accelerated steps (the ``accelerator_type``
    parameter): Vertex AI Pipelines gives steps GPUs only; TPUs go to the custom jobs'
    ``training_machine_type``."""
    if str(accelerator_type or "").upper().startswith("TPU_"):
        raise ValueError(f"accelerator_type {accelerator_type} asks a pipeline step for a TPU, "
                         "which Vertex AI Pipelines does not offer: give the evaluation step a "
                         "GPU (e.g. NVIDIA_L4) and train on TPUs with --training custom_job "
                         "and training_machine_type (e.g. ct5lp-hightpu-4t)")


def _training_parameters(accelerator: str) -> list[inspect.Parameter]:
    """The run-time parameters of custom-job training (the workers' machines)."""
    machine_type, accelerator_type, accelerator_count = DEFAULT_TRAINING_MACHINE[accelerator]
    defaults = {
        # Vertex AI machine type of every host, e.g. ct5lp-hightpu-4t, g2-standard-8.
        "training_machine_type": (str, machine_type),
        # Hosts of a GPU or CPU job (worker pool 0 + pool 1); 1 on TPU (see the topology).
        "training_replica_count": (int, 1),
        # GPUs per host: type and count ("" and 0 on TPU machine types, which carry chips).
        "training_accelerator_type": (str, accelerator_type),
        "training_accelerator_count": (int, accelerator_count),
        # Multi-host TPU slice, e.g. "4x4" (ct5lp-hightpu-4t: 4 hosts); "" = one host.
        "training_tpu_topology": (str, ""),
        # Identity of the workers ("" = Vertex AI's default); it must reach the buckets.
        "training_service_account": (str, ""),
        # VPC peered with Vertex AI, projects/NUMBER/global/networks/NAME ("" = none).
        "training_network": (str, ""),
    }
    return [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default,
                              annotation=kind) for name, (kind, default) in defaults.items()]


def _with_parameters(function: Callable, extra: Sequence[inspect.Parameter]) -> Callable:
    """``function`` (whose ``**kwargs`` take ``extra``) with ``extra`` as named parameters:
    KFP reads a pipeline's parameters from its signature and passes them by position."""
    signature = inspect.signature(function)
    fixed = [parameter for parameter in signature.parameters.values()
             if parameter.kind is not inspect.Parameter.VAR_KEYWORD]
    names = [parameter.name for parameter in [*fixed, *extra]]

    @functools.wraps(function)
    def pipeline(*args, **kwargs):
        return function(**dict(zip(names, args, strict=False)), **kwargs)

    pipeline.__signature__ = signature.replace(parameters=[*fixed, *extra])
    return pipeline


def build_pipeline(
    experiment: ExperimentConfig,
    *,
    categories: Sequence[str] | None = None,
    images: ImageSet | None = None,
    accelerator: str = "cpu",
    name: str = PIPELINE_NAME,
    retries: int = 2,
    training: str = "container",
):
    """A ``@dsl.pipeline`` function whose ``experiment`` parameter defaults to ``experiment``.

    ``categories`` (default: every eval category of the experiment's roles; each must have
    role 'eval') get one Stage II and evaluation each; ``accelerator`` (cpu, gpu, tpu) picks
    the image of the training and evaluation steps, and on gpu/tpu the
    ``accelerator_type``/``accelerator_count`` parameters request the devices on Vertex AI
    (GPUs: a "tpu" build trains on TPU custom jobs only, refused with
    ``training="container"``, and evaluates on a GPU step; components.STEP_ACCELERATOR);
    ``retries`` is how often a failed training or evaluation attempt is retried (with
    back-off; training resumes from its run-scoped checkpoints). ``training="custom_job"``
    runs each training step as a Vertex AI custom job on the ``training_*`` parameters'
    machines (several hosts), launched from a small CPU task.
    """
    from kfp import dsl

    categories = _check_categories(
        experiment.eval_categories if categories is None else categories, experiment)
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    if training not in TRAINING_MODES:
        raise ValueError(f"unknown training {training!r}; choose one of {list(TRAINING_MODES)}")
    images = images or ImageSet()
    steps = make_components(images, accelerator, training)
    on_custom_job = training == "custom_job"
    default_experiment = as_parameter(experiment)
    step_accelerator = STEP_ACCELERATOR[accelerator]
    on_accelerator = step_accelerator != "cpu"
    heavy_cpu, heavy_memory = DEFAULT_HEAVY_RESOURCES[step_accelerator]

    def resources(task, cpu, memory):
        return (task.set_cpu_request(cpu).set_cpu_limit(cpu)
                .set_memory_request(memory).set_memory_limit(memory))

    def heavy(task, cpu, memory, accelerator_type, accelerator_count):
        """Training and evaluation: resources, devices and retries with back-off."""
        resources(task, cpu, memory)
        if on_accelerator:
            task.set_accelerator_type(accelerator_type).set_accelerator_limit(accelerator_count)
        if retries:
            task.set_retry(num_retries=retries, **RETRY_BACKOFF)
        return task

    def launcher(task, **placement):
        """Custom-job training: the task only launches and waits, on the CPU image."""
        resources(task, *LAUNCHER_RESOURCES)
        if retries:
            task.set_retry(num_retries=retries, **RETRY_BACKOFF)
        return task

    train_placement = launcher if on_custom_job else heavy

    def calrec_pipeline(
        raw_data_uri: str,
        # "" = a hash of the raw files' manifest, computed at run time (components.raw_manifest).
        raw_data_version: str = "",
        # The experiment's roles, train, eval and own fields (steps.as_parameter).
        experiment: dict = default_experiment,
        beam_args: list = [],  # noqa: B006 (KFP reads defaults from the signature)
        # Ingestion on Dataflow when a project is given (workers run the ingest image).
        dataflow_project: str = "",
        dataflow_region: str = "",
        dataflow_temp_location: str = "",
        dataflow_machine_type: str = "n1-standard-4",
        dataflow_max_workers: int = 32,
        dataflow_service_account: str = "",
        split: str = "test",
        # Resumable training state: <checkpoint_root>/<run id>/<task> ("" = <root>/checkpoints).
        checkpoint_root: str = "",
        # JAX compilation cache shared by runs ("" = <checkpoint root>/jax-cache, "off").
        jax_cache_dir: str = "",
        # Limit of one training or evaluation attempt (0 = none); a timeout is retried.
        timeout_hours: float = 24.0,
        cpu_limit: str = heavy_cpu,
        memory_limit: str = heavy_memory,
        ingest_cpu_limit: str = DEFAULT_INGEST_RESOURCES[0],
        ingest_memory_limit: str = DEFAULT_INGEST_RESOURCES[1],
        accelerator_type: str = DEFAULT_ACCELERATOR_TYPE[step_accelerator],
        accelerator_count: int = 1 if on_accelerator else 0,
        **custom_job_parameters,  # training="custom_job": _training_parameters
    ) -> PipelineOutputs:
        placement = dict(cpu=cpu_limit, memory=memory_limit, accelerator_type=accelerator_type,
                         accelerator_count=accelerator_count)
        state = dict(checkpoint_root=checkpoint_root, pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER,
                     jax_cache_dir=jax_cache_dir, timeout_hours=timeout_hours)
        version = resources(steps.raw_data_version(
            raw_data_uri=raw_data_uri, version=raw_data_version,
        ), ingest_cpu_limit, ingest_memory_limit).set_display_name("raw-data-version")
        version.set_caching_options(False)  # the files behind the URI may have changed
        views = steps.configure(
            experiment=experiment, eval_categories=list(categories),
        ).set_display_name("configure")
        # Lineage starts at the source: the raw files become an artifact with their version.
        raw_data = dsl.importer(
            artifact_uri=raw_data_uri, artifact_class=dsl.Dataset, reimport=False,
            metadata={"raw_data_version": version.output},
        ).set_display_name("raw-data")
        ingest = resources(steps.ingest(
            raw_data=raw_data.output, roles=views.outputs["ingest"], beam_args=beam_args,
            raw_data_version=version.output,
            dataflow=dict(project=dataflow_project, region=dataflow_region,
                          temp_location=dataflow_temp_location, worker_image=images.ingest,
                          machine_type=dataflow_machine_type, max_workers=dataflow_max_workers,
                          service_account=dataflow_service_account),
        ), ingest_cpu_limit, ingest_memory_limit).set_display_name("ingest")
        dataset = ingest.outputs["dataset"]
        # Recorded by the heavy tasks; passing it makes KFP carry the placement parameters
        # into the loop (it does not for parameters used only in resource settings).
        machine = [cpu_limit, memory_limit, accelerator_type, accelerator_count]
        training = dict(dataset=dataset, experiment=views.outputs["train"],
                        run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER, machine=machine, **state)
        if on_custom_job:
            parameters = {key.removeprefix("training_"): value
                          for key, value in custom_job_parameters.items()}
            training.update(
                machine=[*LAUNCHER_RESOURCES, "", 0],
                custom_job=dict(parameters, worker_image=images.for_accelerator(accelerator)),
                project=PROJECT_PLACEHOLDER, location=LOCATION_PLACEHOLDER)
        stage1 = train_placement(steps.train(stage=1, **training),
                                 **placement).set_display_name("train-stage1")
        with dsl.ParallelFor(list(categories), name="categories") as category:
            # Each iteration reads its views from the experiment parameter itself: KFP's local
            # runner (2.17) replaces a task output that enters a loop with the loop item.
            category_views = steps.configure(
                experiment=experiment, eval_categories=list(categories),
            ).set_display_name("configure-category")
            stage2 = train_placement(steps.train(
                stage=2, category=category, init_model=stage1.outputs["model"],
                **{**training, "experiment": category_views.outputs["train"]},
            ), **placement).set_display_name("train-stage2")
            evaluate = heavy(steps.evaluate(
                dataset=dataset, model=stage2.outputs["model"], category=category,
                experiment=category_views.outputs["evaluate"], split=split,
                jax_cache_dir=jax_cache_dir, checkpoint_root=checkpoint_root,
                pipeline_root=dsl.PIPELINE_ROOT_PLACEHOLDER, timeout_hours=timeout_hours,
                machine=machine,
            ), **placement).set_display_name("evaluate")
        report = steps.report(
            evaluations=dsl.Collected(evaluate.outputs["evaluation"]),
            stage1_model=stage1.outputs["model"],
            stage2_models=dsl.Collected(stage2.outputs["model"]),
        ).set_display_name("report")
        return PipelineOutputs(report.outputs["report"], report.outputs["report_html"])

    extra = _training_parameters(accelerator) if on_custom_job else []
    calrec_pipeline = dsl.pipeline(
        name=name, description="CALRec: ingest, two-stage fine-tuning, evaluation.",
    )(_with_parameters(calrec_pipeline, extra))
    calrec_pipeline.categories = tuple(categories)
    return calrec_pipeline


@dataclasses.dataclass(frozen=True)
class BuildOptions:
    """What fixes the DAG's shape and images (everything else is a run-time parameter)."""

    experiment: ExperimentConfig  # The default of the 'experiment' parameter.
    # Evaluation categories, one Stage II and evaluate task each (None: the experiment's).
    categories: tuple[str, ...] | None = None
    accelerator: str = "cpu"  # cpu, gpu or tpu: image and devices of the heavy steps.
    images: ImageSet = dataclasses.field(default_factory=ImageSet)  # Images to run on.
    retries: int = 2  # Retries (with back-off) of each training and evaluation task.
    # "container": train inside the task (one host); "custom_job": each training task
    # launches a Vertex AI custom job on the training_* parameters' machines and waits.
    training: str = "container"

    def build(self):
        return build_pipeline(self.experiment, categories=self.categories, images=self.images,
                              accelerator=self.accelerator, retries=self.retries,
                              training=self.training)

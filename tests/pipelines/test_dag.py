"""The DAG's shape, parameters and placement, read back from the compiled spec via the KFP SDK."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import yaml

from calrec_core.cli import main
from calrec_core.data import load_roles_config, roles_config_from_dict
from calrec_core.experiment import ExperimentConfig, preset
from components import ImageSet
from pipelines import (
    BuildOptions,
    build_pipeline,
    compile_pipeline,
    compiled_experiment,
    load_pipeline_spec,
)

CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
IMAGES = ImageSet.tagged("us-docker.pkg.dev/test-project/calrec", "0123abcd")
# The parameters the experiment replaced: experiment settings are no pipeline parameters.
MIRRORED = ("roles", "train_preset", "alpha", "beta", "tau", "learning_rate", "batch_size",
            "stage1_steps", "stage2_steps", "train_overrides", "eval_preset", "n_gen",
            "n_preds", "eval_temperature", "eval_max_users", "eval_seed", "baselines")


@pytest.fixture(scope="module")
def roles(sample_config):
    return load_roles_config(sample_config)


def _experiment(name: str, roles) -> ExperimentConfig:
    return dataclasses.replace(preset(name), roles=roles)


def _compile(tmp_path, roles, preset="tiny", **options) -> dict:
    options = BuildOptions(experiment=_experiment(preset, roles), categories=CATEGORIES,
                           images=IMAGES, **options)
    return load_pipeline_spec(compile_pipeline(options, tmp_path / "calrec.yaml"))


def _tasks(spec: dict) -> dict[str, dict]:
    """Display name -> task, for the root DAG and the per-category loop."""
    dags = [spec["root"]["dag"]] + [component["dag"] for component in spec["components"].values()
                                    if "dag" in component]
    return {task["taskInfo"]["name"]: task for dag in dags for task in dag["tasks"].values()}


def _executor(spec: dict, task: dict) -> dict:
    return spec["deploymentSpec"]["executors"][
        spec["components"][task["componentRef"]["name"]]["executorLabel"]]


def test_dag_versions_and_imports_the_raw_data_then_fans_out_per_category_into_the_report(
        tmp_path, roles):
    spec = _compile(tmp_path, roles)
    root = spec["root"]["dag"]["tasks"]
    tasks = _tasks(spec)
    assert set(tasks) == {"configure", "raw-data-version", "raw-data", "ingest", "train-stage1",
                          "categories", "configure-category", "train-stage2", "evaluate",
                          "report"}
    # The version step always runs; ingestion is cached on its output and the imported data.
    assert tasks["raw-data-version"]["cachingOptions"].get("enableCache", False) is False
    ingest = tasks["ingest"]["inputs"]
    assert ingest["parameters"]["raw_data_version"]["taskOutputParameter"]["producerTask"] == (
        "raw-data-version")
    assert ingest["artifacts"]["raw_data"]["taskOutputArtifact"]["producerTask"] == "importer"
    # Dataflow by parameters alone: its workers run the ingest step's own image.
    dataflow = ingest["parameters"]["dataflow"]["runtimeValue"]["constant"]
    assert dataflow["worker_image"] == IMAGES.ingest
    for key in ("project", "region", "temp_location", "machine_type", "max_workers",
                "service_account"):
        assert dataflow[key] == f"{{{{$.inputs.parameters['pipelinechannel--dataflow_{key}']}}}}"
    assert spec["root"]["inputDefinitions"]["parameters"]["dataflow_project"][
        "defaultValue"] == ""  # no project: the DirectRunner inside the step
    # The experiment parameter goes to the configure steps alone (with the compiled
    # categories they check); every other step reads the view of it that one hands on.
    keys = {task["taskInfo"]["name"]: key for component in spec["components"].values()
            if "dag" in component for key, task in component["dag"]["tasks"].items()}
    for name in ("configure", "configure-category"):
        configure = tasks[name]["inputs"]["parameters"]
        source = configure["experiment"]["componentInputParameter"]
        assert source == "experiment" or tasks["categories"]["inputs"]["parameters"][source][
            "componentInputParameter"] == "experiment"
        assert configure["eval_categories"]["runtimeValue"]["constant"] == list(CATEGORIES)
    for name, parameter, producer, view in [
            ("ingest", "roles", "configure", "ingest"),
            ("train-stage1", "experiment", "configure", "train"),
            ("train-stage2", "experiment", keys["configure-category"], "train"),
            ("evaluate", "experiment", keys["configure-category"], "evaluate")]:
        source = tasks[name]["inputs"]["parameters"][parameter]["taskOutputParameter"]
        assert source == {"producerTask": producer, "outputParameterKey": view}, name
    # One training component serves both stages: Stage II starts from Stage I's model.
    stage1 = next(name for name, task in root.items()
                  if task["taskInfo"]["name"] == "train-stage1")
    assert tasks["train-stage1"]["componentRef"] == {"name": "comp-train"}
    stage2 = tasks["train-stage2"]["inputs"]
    assert stage2["parameters"]["stage"]["runtimeValue"]["constant"] == 2
    assert tasks["train-stage1"]["inputs"]["parameters"]["stage"]["runtimeValue"][
        "constant"] == 1
    assert "init_model" not in tasks["train-stage1"]["inputs"].get("artifacts", {})
    assert tasks["categories"]["inputs"]["artifacts"][
        stage2["artifacts"]["init_model"]["componentInputArtifact"]]["taskOutputArtifact"][
        "producerTask"] == stage1
    importer = spec["deploymentSpec"]["executors"]["exec-importer"]["importer"]
    assert importer["typeSchema"]["schemaTitle"] == "system.Dataset"
    assert importer["metadata"] == {"raw_data_version": "{{$.inputs.parameters['metadata']}}"}
    assert tasks["raw-data"]["inputs"]["parameters"]["uri"]["componentInputParameter"] == (
        "raw_data_uri")
    # One loop over the compiled categories; the report collects every evaluation.
    loop = tasks["categories"]
    assert yaml.safe_load(loop["parameterIterator"]["items"]["raw"]) == list(CATEGORIES)
    collected = tasks["report"]["inputs"]["artifacts"]["evaluations"]
    assert collected["taskOutputArtifact"]["producerTask"] == next(
        name for name, task in root.items() if "parameterIterator" in task)
    assert tasks["evaluate"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"][
        "producerTask"] == keys["train-stage2"]
    # Training and evaluation retry with back-off; the run id scopes their checkpoints.
    for name in ("train-stage1", "train-stage2", "evaluate"):
        policy = tasks[name]["retryPolicy"]
        assert policy["maxRetryCount"] == 2 and policy["backoffFactor"] == 2.0
        assert policy["backoffDuration"] == "60s"
    for name in ("train-stage1", "train-stage2"):
        run_id = tasks[name]["inputs"]["parameters"]["run_id"]["runtimeValue"]["constant"]
        assert run_id == "{{$.pipeline_job_uuid}}"
    for name in ("configure", "configure-category", "ingest", "raw-data-version", "report"):
        assert "retryPolicy" not in tasks[name]
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"


def test_any_number_of_categories_fan_out_and_retries_follow_the_build_options(tmp_path):
    many = roles_config_from_dict(
        {"categories": {f"Category_{i}": {"role": "eval"} for i in range(12)}})
    options = BuildOptions(experiment=_experiment("tiny", many), images=IMAGES, retries=0)
    spec = load_pipeline_spec(compile_pipeline(options, tmp_path / "many.yaml"))
    loop = _tasks(spec)["categories"]
    assert len(yaml.safe_load(loop["parameterIterator"]["items"]["raw"])) == 12
    assert "retryPolicy" not in _tasks(spec)["train-stage1"]


@pytest.mark.parametrize("name", ["tiny", "paper"])
def test_the_experiment_parameter_defaults_to_the_compiled_experiment(tmp_path, roles, name):
    spec = _compile(tmp_path, roles, preset=name)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert "defaultValue" not in parameters["raw_data_uri"]  # required
    assert parameters["experiment"]["parameterType"] == "STRUCT"
    assert not set(MIRRORED) & set(parameters)
    assert compiled_experiment(spec) == _experiment(name, roles)


def test_set_overrides_reach_the_compiled_experiment_and_roles_limit_the_categories(
        tmp_path, sample_config, capsys):
    path = tmp_path / "calrec.yaml"
    assert main(["pipeline", "compile", "--preset", "tiny", "--roles", str(sample_config),
                 "--set", "train.alpha=0", "--set", "eval.n_gen=2",
                 "--set", "experiment.baselines=lir", "--output", str(path),
                 "--allow-placeholder-image"]) == 0
    experiment = compiled_experiment(load_pipeline_spec(path))
    assert (experiment.train.alpha, experiment.eval.n_gen, experiment.baselines) == (
        0.0, 2, ("lir",))
    assert experiment.preset == "tiny" and experiment.eval_categories == CATEGORIES
    capsys.readouterr()
    with pytest.raises(SystemExit, match="calrec pipeline compile: .*unknown field 'alpah'"):
        main(["pipeline", "compile", "--set", "train.alpah=0", "--output", str(path),
              "--allow-placeholder-image"])


def test_cpu_build_places_steps_on_their_images_with_parameterised_resources(tmp_path, roles):
    spec = _compile(tmp_path, roles)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert (parameters["cpu_limit"]["defaultValue"], parameters["memory_limit"]["defaultValue"]) \
        == ("8", "32G")
    assert parameters["timeout_hours"]["defaultValue"] == 24.0
    assert parameters["checkpoint_root"]["defaultValue"] == ""
    assert parameters["jax_cache_dir"]["defaultValue"] == ""
    tasks = _tasks(spec)
    for name, task in tasks.items():
        if "componentRef" not in task or name in ("categories", "raw-data"):
            continue
        container = _executor(spec, task)["container"]
        assert container["image"] == (IMAGES.ingest if name in ("ingest", "raw-data-version")
                                      else IMAGES.cpu), name
        assert "pip install" not in " ".join(container["command"])  # the image has it all
        assert "accelerator" not in container.get("resources", {})
        if name in ("train-stage1", "train-stage2", "evaluate"):
            assert "cpu_limit" in container["resources"]["resourceCpuLimit"]
            assert "memory_limit" in container["resources"]["resourceMemoryRequest"]


@pytest.mark.parametrize(("accelerator", "image", "device", "cpu"),
                         [("gpu", IMAGES.cuda, "NVIDIA_L4", "8")])
def test_accelerator_builds_place_training_and_evaluation_on_parameterised_devices(
        tmp_path, roles, accelerator, image, device, cpu):
    spec = _compile(tmp_path, roles, preset="paper", accelerator=accelerator)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["accelerator_type"]["defaultValue"] == device
    assert parameters["accelerator_count"]["defaultValue"] == 1
    assert parameters["cpu_limit"]["defaultValue"] == cpu
    # Every parameter the loop's resource settings name reaches the loop (else the tasks
    # inside cannot resolve their machine at run time).
    loop = next(c for name, c in spec["components"].items() if name.startswith("comp-for-loop"))
    for task in loop["dag"]["tasks"].values():
        resources = json.dumps(_executor(spec, task)["container"].get("resources", {}))
        for channel in re.findall(r"pipelinechannel--[a-z_]+", resources):
            assert channel in loop["inputDefinitions"]["parameters"], channel
    for name, task in _tasks(spec).items():
        if name in ("categories", "raw-data"):
            continue
        container = _executor(spec, task)["container"]
        if name in ("configure", "configure-category", "ingest", "raw-data-version",
                    "report"):
            assert container["image"] in (IMAGES.cpu, IMAGES.ingest)
            assert "accelerator" not in container.get("resources", {})
        else:
            assert container["image"] == image
            accelerator_spec = container["resources"]["accelerator"]
            assert "accelerator_type" in accelerator_spec["resourceType"]
            assert "accelerator_count" in accelerator_spec["resourceCount"]


def test_bad_category_choices_are_refused_with_a_clear_error(roles):
    experiment = _experiment("tiny", roles)
    with pytest.raises(ValueError, match="at least one"):
        build_pipeline(experiment, categories=[])
    with pytest.raises(ValueError, match="named twice"):
        build_pipeline(experiment, categories=["Gift_Cards", "Gift_Cards"])
    with pytest.raises(ValueError, match="role 'eval'"):
        build_pipeline(experiment, categories=["Office_Products"])
    pretrain = roles_config_from_dict({"categories": {"Gift_Cards": {"role": "pretrain"},
                                                      "Magazine_Subscriptions": {"role": "eval"}}})
    with pytest.raises(ValueError, match="role 'eval'"):
        build_pipeline(_experiment("tiny", pretrain), categories=["Gift_Cards"])
    with pytest.raises(ValueError, match="retries"):
        build_pipeline(experiment, retries=-1)
    with pytest.raises(ValueError, match="accelerator"):
        build_pipeline(experiment, accelerator="fpga")


def test_a_tpu_build_trains_only_on_custom_jobs_and_evaluates_on_a_gpu_step(tmp_path, roles):
    """Vertex AI Pipelines offers steps GPUs, no TPUs: refused at compile time in one line."""
    experiment = _experiment("tiny", roles)
    with pytest.raises(ValueError) as refused:
        build_pipeline(experiment, accelerator="tpu")
    message = str(refused.value)
    assert "\n" not in message and "pipeline steps get no TPUs" in message
    assert "--training custom_job" in message
    spec = _compile(tmp_path, roles, accelerator="tpu", training="custom_job")
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["accelerator_type"]["defaultValue"] == "NVIDIA_L4"
    assert parameters["training_machine_type"]["defaultValue"] == "ct5lp-hightpu-4t"
    for name, task in _tasks(spec).items():
        if "componentRef" not in task or name in ("categories", "raw-data"):
            continue
        container = _executor(spec, task)["container"]
        if name == "evaluate":
            assert container["image"] == IMAGES.cuda
        else:
            assert container["image"] != IMAGES.tpu, name  # only the jobs' workers run it
    assert "TPU_" not in json.dumps(spec["deploymentSpec"])
    # The run-time parameter cannot bring a TPU back to a step either.
    from pipelines.dag import check_step_accelerator_type

    check_step_accelerator_type("NVIDIA_L4")
    with pytest.raises(ValueError, match="asks a pipeline step for a TPU"):
        check_step_accelerator_type("TPU_V5_LITEPOD")

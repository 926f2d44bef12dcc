"""The DAG's shape, parameters and placement, read back from the compiled spec via the KFP SDK."""

from __future__ import annotations

import pytest
import yaml

from calrec_core.eval.config import EvalConfig
from calrec_core.train.config import TrainConfig
from components import ImageSet
from pipelines import BuildOptions, build_pipeline, compile_pipeline, load_pipeline_spec

CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")
IMAGES = ImageSet.tagged("us-docker.pkg.dev/test-project/calrec", "0123abcd")


@pytest.fixture(scope="module")
def roles(sample_config):
    return yaml.safe_load(sample_config.read_text())


def _compile(tmp_path, roles, **options) -> dict:
    options = BuildOptions(categories=CATEGORIES, roles=roles, images=IMAGES, **options)
    return load_pipeline_spec(compile_pipeline(options, tmp_path / "calrec.yaml"))


def _tasks(spec: dict) -> dict[str, dict]:
    """Display name -> task, for the root DAG."""
    return {task["taskInfo"]["name"]: task for task in spec["root"]["dag"]["tasks"].values()}


def test_dag_runs_ingest_stage1_then_stage2_and_evaluation_per_category_then_report(
        tmp_path, roles):
    spec = _compile(tmp_path, roles, preset="tiny")
    tasks = _tasks(spec)
    key = {task["taskInfo"]["name"]: name for name, task in spec["root"]["dag"]["tasks"].items()}
    assert set(tasks) == {"ingest", "train-stage1", "report",
                          *(f"train-stage2-{c}" for c in CATEGORIES),
                          *(f"evaluate-{c}" for c in CATEGORIES)}

    def upstream(display_name):
        return {name for name, k in key.items()
                if k in tasks[display_name].get("dependentTasks", [])}

    assert upstream("ingest") == set()
    assert upstream("train-stage1") == {"ingest"}
    for category in CATEGORIES:
        stage2 = tasks[f"train-stage2-{category}"]
        assert upstream(f"train-stage2-{category}") == {"ingest", "train-stage1"}
        assert stage2["inputs"]["parameters"]["category"]["runtimeValue"]["constant"] == category
        assert upstream(f"evaluate-{category}") == {"ingest", f"train-stage2-{category}"}
        model_input = tasks[f"evaluate-{category}"]["inputs"]["artifacts"]["model"]
        assert model_input["taskOutputArtifact"]["producerTask"] == key[f"train-stage2-{category}"]
    assert upstream("report") == {f"evaluate-{c}" for c in CATEGORIES}
    assert all(task["cachingOptions"]["enableCache"] for task in tasks.values())
    outputs = spec["root"]["outputDefinitions"]["artifacts"]
    assert outputs["report"]["artifactType"]["schemaTitle"] == "system.Markdown"
    assert outputs["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_parameter_defaults_come_from_the_named_presets(tmp_path, roles, preset):
    parameters = _compile(tmp_path, roles, preset=preset)["root"]["inputDefinitions"]["parameters"]

    def default(name):
        return parameters[name]["defaultValue"]

    train, evaluation = TrainConfig.preset(preset), EvalConfig.preset(preset)
    assert "defaultValue" not in parameters["raw_data_uri"]  # required
    assert (default("alpha"), default("beta"), default("tau")) == (
        train.alpha, train.beta, train.temperature)
    assert default("stage1_steps") == train.stage1_steps
    assert default("stage2_steps") == train.stage2_steps
    assert default("batch_size") == train.batch_size
    assert (default("n_gen"), default("n_preds")) == (evaluation.n_gen, evaluation.n_preds)
    assert default("eval_max_users") == (evaluation.max_users or 0)
    assert default("train_preset") == default("eval_preset") == preset
    assert default("baselines") == ["lir", "pretrained"]
    assert default("roles")["categories"] == roles["categories"]


def test_cpu_build_runs_everything_on_the_component_image_without_accelerators(tmp_path, roles):
    spec = _compile(tmp_path, roles, preset="tiny")
    executors = spec["deploymentSpec"]["executors"].values()
    assert {executor["container"]["image"] for executor in executors} == {IMAGES.cpu}
    assert not any("resources" in executor["container"] for executor in executors)
    for executor in executors:  # the image carries the package: nothing installed at run time
        assert "pip install" not in " ".join(executor["container"]["command"])


@pytest.mark.parametrize(("accelerator", "image", "device"),
                         [("gpu", IMAGES.cuda, "NVIDIA_L4"), ("tpu", IMAGES.tpu, "TPU_V5_LITEPOD")])
def test_accelerator_builds_place_training_and_evaluation_on_parameterised_devices(
        tmp_path, roles, accelerator, image, device):
    spec = _compile(tmp_path, roles, preset="paper", accelerator=accelerator)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["accelerator_type"]["defaultValue"] == device
    assert parameters["accelerator_count"]["defaultValue"] == 1
    tasks = _tasks(spec)
    executors = spec["deploymentSpec"]["executors"]
    components = spec["components"]
    for name, task in tasks.items():
        executor = executors[components[task["componentRef"]["name"]]["executorLabel"]]
        container = executor["container"]
        if name in ("ingest", "report"):
            assert container["image"] == IMAGES.cpu and "resources" not in container
        else:
            assert container["image"] == image
            accelerator_spec = container["resources"]["accelerator"]
            assert "accelerator_type" in accelerator_spec["resourceType"]
            assert "accelerator_count" in accelerator_spec["resourceCount"]


def test_bad_category_choices_are_refused_with_a_clear_error(roles):
    with pytest.raises(ValueError, match="at least one"):
        build_pipeline([], roles)
    with pytest.raises(ValueError, match="named twice"):
        build_pipeline(["Gift_Cards", "Gift_Cards"], roles)
    with pytest.raises(ValueError, match="role 'eval'"):
        build_pipeline(["Office_Products"], roles)
    pretrain = {"categories": {"Gift_Cards": {"role": "pretrain"},
                               "Magazine_Subscriptions": {"role": "eval"}}}
    with pytest.raises(ValueError, match="role 'eval'"):
        build_pipeline(["Gift_Cards"], pretrain)
    many = {"categories": {f"Category_{i}": {"role": "eval"} for i in range(9)}}
    with pytest.raises(ValueError, match="at most 8"):
        build_pipeline(list(many["categories"]), many)
    with pytest.raises(ValueError, match="accelerator"):
        build_pipeline(["Gift_Cards"], roles, accelerator="fpga")

"""What the first cloud run depends on, checked from the build definitions (no Docker engine
runs here): the ingest image starts Beam's boot of the pinned Beam (Dataflow's custom-container
contract), the pipeline launches Dataflow from the image its workers run, Cloud Build labels
every run with its commit however it is started, and the smoke tests Cloud Build runs inside
each image run here too where they can (ingest without the boot check, the CPU image)."""

from __future__ import annotations

import json
import os
import pathlib
import re
import runpy
import shlex
import subprocess
import sys

import pytest
import yaml
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SMOKE = DOCKER / "smoke"
BOOT = "/opt/apache/beam/boot"


def pinned_version(package: str) -> str:
    """``package``'s version in the one pinned set (constraints.txt)."""
    pins = runpy.run_path(str(DOCKER / "pins.py"))["read_pins"]()
    assert canonicalize_name(package) in pins, f"{package} is not pinned in constraints.txt"
    return pins[canonicalize_name(package)]


def locked_version(lock: str, package: str) -> str:
    text = (DOCKER / "locks" / f"{lock}.txt").read_text()
    match = re.search(rf"^{re.escape(package)}==(\S+)", text, re.M)
    assert match, f"{package} is not in docker/locks/{lock}.txt"
    return match.group(1)


def dockerfile(name: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuations joined, comments dropped."""
    lines = [line for line in (DOCKER / f"{name}.Dockerfile").read_text().splitlines()
             if not line.lstrip().startswith("#")]
    joined = "\n".join(lines).replace("\\\n", " ")
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1].strip())
            for line in joined.splitlines() if line.strip()]


def stages(instructions) -> list[list[tuple[str, str]]]:
    found = []
    for instruction in instructions:
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def test_ingest_image_starts_beams_boot_of_the_pinned_beam():
    beam = pinned_version("apache-beam")
    # The ingest image's lock installs the pinned Beam.
    assert locked_version("calrec-ingest", "apache-beam") == beam
    sdk, final = stages(dockerfile("calrec-ingest"))
    image, _, alias = sdk[0][1].partition(" AS ")
    match = re.fullmatch(r"apache/beam_python(\d+\.\d+)_sdk:(\S+)", image.strip())
    assert match, f"the first stage must be Beam's SDK image, got {image!r}"
    sdk_python, sdk_beam = match.groups()
    assert sdk_beam == beam, "boot must come from the SDK image of the pinned Beam"
    assert len(sdk) == 1, "nothing else is built in the SDK stage"
    base = re.fullmatch(r"python:(\d+)\.(\d+)\.\d+-slim-\w+", final[0][1])
    assert base and f"{base.group(1)}.{base.group(2)}" == sdk_python
    copies = [arguments.split() for instruction, arguments in final if instruction == "COPY"
              and arguments.startswith("--from=")]
    assert copies == [[f"--from={alias.strip()}", "/opt/apache/beam", "/opt/apache/beam"]]
    entrypoints = [arguments for instruction, arguments in final if instruction == "ENTRYPOINT"]
    assert [json.loads(entry) for entry in entrypoints] == [[BOOT]]
    assert final[-1][0] == "ENTRYPOINT"
    # The build stops unless the installed Beam is the one boot belongs to.
    runs = " ".join(arguments for instruction, arguments in final if instruction == "RUN")
    assert f"apache_beam.__version__ != '{beam}'" in runs
    # Root as in Beam's images (Dataflow mounts its worker directories root-owned), and no
    # virtual environment built at each worker start.
    users = [arguments for instruction, arguments in final if instruction == "USER"]
    assert users == ["0:0"]
    env = " ".join(arguments for instruction, arguments in final if instruction == "ENV")
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in env.split()


def test_the_images_python_is_the_one_the_locks_resolve_for():
    import runpy

    python = runpy.run_path(str(DOCKER / "locks.py"))["PYTHON_VERSION"]
    for name in ("calrec-ingest", "calrec", "calrec-cuda", "calrec-tpu"):
        final = stages(dockerfile(name))[-1]
        assert re.fullmatch(rf"python:{re.escape(python)}\.\d+-slim-\w+", final[0][1]), name


def test_dataflow_is_launched_with_the_beam_its_workers_run(tmp_path, sample_config):
    """The ingest step submits the Dataflow job from the ingest image and names that image
    for the workers, so launcher and workers run one Beam; a launch from a checkout runs
    the pinned one."""
    import dataclasses

    import apache_beam

    from calrec_core.data import load_roles_config
    from calrec_core.experiment.config import preset
    from components import ImageSet
    from pipelines import BuildOptions, compile_pipeline, load_pipeline_spec

    images = ImageSet.tagged("europe-docker.pkg.dev/acme/calrec", "c0ffee1")
    experiment = dataclasses.replace(preset("tiny"), roles=load_roles_config(sample_config))
    spec = load_pipeline_spec(compile_pipeline(BuildOptions(experiment=experiment,
                                                            images=images),
                                               tmp_path / "spec.yaml"))
    (task,) = [task for task in spec["root"]["dag"]["tasks"].values()
               if task["taskInfo"]["name"] == "ingest"]
    executor = task["componentRef"]["name"].replace("comp-", "exec-")
    launcher = spec["deploymentSpec"]["executors"][executor]["container"]["image"]
    dataflow = task["inputs"]["parameters"]["dataflow"]["runtimeValue"]["constant"]
    assert launcher == dataflow["worker_image"] == images.ingest
    assert apache_beam.__version__ == pinned_version("apache-beam")


def _bash(script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", script, *args], capture_output=True, text=True, cwd=REPO,
                          env=dict(os.environ, **env), timeout=60)


def _cloudbuild() -> dict:
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


@pytest.mark.parametrize("commit, accepted", [
    ("", False), ("HEAD", False), ("$(git rev-parse HEAD)", False), ("c0ffee1", True),
    ("0123456789abcdef0123456789abcdef01234567", True),
])
def test_a_build_without_a_commit_stops_in_one_line(commit, accepted):
    result = _bash(str(DOCKER / "check-commit.sh"), commit)
    assert (result.returncode == 0) == accepted
    if not accepted:
        assert len(result.stderr.strip().splitlines()) == 1
        assert "--substitutions=COMMIT_SHA=" in result.stderr


def test_every_run_cloud_build_starts_is_labelled_with_its_commit():
    build = _cloudbuild()
    text = (REPO / "cloudbuild.yaml").read_text()
    # SHORT_SHA exists only for trigger builds; COMMIT_SHA is checked by the first step.
    assert "${SHORT_SHA}" not in text and "$SHORT_SHA" not in text
    first = build["steps"][0]
    assert first["id"] == "check-commit" and "waitFor" not in first
    assert first["args"] == ["docker/check-commit.sh", "${COMMIT_SHA}"]
    # No step starts before it: those without waitFor wait for every earlier step.
    assert "waitFor" not in build["steps"][1]
    labels = re.findall(r"--label \"?commit=([^\"\s]+)", text)
    assert labels == ["${COMMIT_SHA}"]


def test_each_image_is_smoke_tested_inside_itself_by_its_script():
    steps = {step["id"]: step for step in _cloudbuild()["steps"]}
    expected = {
        "calrec-ingest": ["docker/smoke/calrec-ingest.sh", "/workspace/smoke/ingested"],
        "calrec": ["docker/smoke/calrec.sh", "/workspace/smoke/ingested"],
        "calrec-cuda": ["docker/smoke/accelerator.sh", "cuda"],
        "calrec-tpu": ["docker/smoke/accelerator.sh", "tpu"],
    }
    for image, args in expected.items():
        step = steps[f"smoke-{image}"]
        assert step["name"] == f"${{_REGISTRY}}/{image}:${{COMMIT_SHA}}"
        assert step["entrypoint"] == "bash" and step["args"] == args
        assert f"build-{image}" in step["waitFor"]
        assert (REPO / args[0]).is_file()
    # The CPU image trains on what the ingest image ingested.
    assert "smoke-calrec-ingest" in steps["smoke-calrec"]["waitFor"]
    check = steps["entrypoint-calrec-ingest"]
    assert check["args"] == ["docker/smoke/entrypoint.sh",
                             "${_REGISTRY}/calrec-ingest:${COMMIT_SHA}", BOOT, "0:0"]
    assert set(steps["push"]["waitFor"]) == {"entrypoint-calrec-ingest",
                                              *(f"smoke-{image}" for image in expected)}
    for script in [*SMOKE.glob("*.sh"), DOCKER / "check-commit.sh"]:
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, script


@pytest.mark.parametrize("flavour, modules", [
    ("cuda", ("jax_cuda12_plugin", "jax_plugins.xla_cuda12")), ("tpu", ("libtpu",))])
def test_accelerator_smoke_lists_backends_or_names_the_missing_plugin(flavour, modules):
    import importlib.util

    def installed(name):
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            return False

    result = _bash(str(SMOKE / "accelerator.sh"), flavour,
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                            os.environ.get("PYTHONPATH")])))
    missing = [name for name in modules if not installed(name)]
    if missing:  # the development and CI environments: one line naming what is missing
        assert result.returncode == 1
        assert result.stderr.strip() == (f"smoke calrec-{flavour}: {', '.join(missing)} "
                                         "not installed")
    else:  # the plugin is here: without the device JAX still lists the CPU backend
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"smoke calrec-{flavour}: jax " in result.stdout and "'cpu'" in result.stdout


@pytest.mark.xdist_group("smoke_scripts")
def test_ingest_then_cpu_smoke_tests_pass_outside_docker(tmp_path):
    scratch = tmp_path / "scratch"  # the scripts' mktemp folders, removed with tmp_path
    scratch.mkdir()
    env = dict(os.environ, SMOKE_SKIP_BOOT="1", TMPDIR=str(scratch),
               PATH=f"{pathlib.Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO),
                                                        os.environ.get("PYTHONPATH")])))
    ingested = tmp_path / "ingested"
    ingest = subprocess.run(["bash", str(SMOKE / "calrec-ingest.sh"), str(ingested)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    assert "boot check skipped" in ingest.stdout
    assert json.loads((ingested / "stats.json").read_text())["categories"].keys() == {
        "Gift_Cards"}
    cpu = subprocess.run(["bash", str(SMOKE / "calrec.sh"), str(ingested)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=900)
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    assert "smoke calrec: trained 1 step, evaluated ['calrec', 'lir']" in cpu.stdout
    # Without the image (no boot) the ingest smoke test fails rather than skipping it.
    if not pathlib.Path(BOOT).exists():
        env.pop("SMOKE_SKIP_BOOT")
        result = subprocess.run(["bash", str(SMOKE / "calrec-ingest.sh"),
                                 str(tmp_path / "again")], cwd=REPO, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert f"{BOOT} is missing" in result.stderr


def test_smoke_scripts_are_shell_commands_cloud_build_can_quote():
    for step in _cloudbuild()["steps"]:
        if step["id"].startswith(("smoke-", "entrypoint-")):
            assert shlex.join(step["args"])  # plain argument lists, no inline shell


@pytest.mark.parametrize("training", ["custom_job", "container"])
def test_cloud_builds_tpu_compile_takes_the_custom_job_path(training, tmp_path, monkeypatch):
    from calrec_core.cli import build_parser
    from components import ImageSet
    from pipelines import load_pipeline_spec

    (template,) = [step for step in _cloudbuild()["steps"] if step["id"] == "template"]
    script = template["args"][-1].replace("\\\n", " ")
    (command,) = [line for line in script.splitlines() if "calrec pipeline compile" in line]
    values = {"${_REGISTRY}": "europe-docker.pkg.dev/acme/calrec", "${COMMIT_SHA}": "c0ffee1",
              "${_PRESET}": "tiny", "${_ROLES}": "configs/sample.yaml",
              "${_ACCELERATOR}": "tpu", "${_TRAINING}": training}
    for key, value in values.items():
        command = command.replace(key, value)
    args = shlex.split(command)[1:]
    output = tmp_path / "calrec-pipeline.yaml"
    args[args.index("--output") + 1] = str(output)
    monkeypatch.chdir(REPO)
    parsed = build_parser().parse_args(args)
    if training == "container":
        with pytest.raises(SystemExit, match="pipeline steps get no TPUs") as refused:
            parsed.handler(parsed)
        assert "\n" not in str(refused.value) and not output.exists()
        return
    assert parsed.handler(parsed) == 0
    spec = load_pipeline_spec(output)
    tagged = ImageSet.tagged(values["${_REGISTRY}"], values["${COMMIT_SHA}"])
    used = {executor["container"]["image"]
            for executor in spec["deploymentSpec"]["executors"].values()
            if "container" in executor}
    # Steps: ingest, CPU (launchers, report), CUDA (evaluation); the TPU image only as the
    # custom jobs' worker image.
    assert used == {tagged.ingest, tagged.cpu, tagged.cuda}
    assert f'"worker_image": "{tagged.tpu}"' in json.dumps(spec)

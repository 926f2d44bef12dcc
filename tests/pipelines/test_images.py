"""The images, their hash locks and Cloud Build agree with setup.py and with what components
run on. No Docker engine runs here, so these check the build definitions themselves."""

from __future__ import annotations

import importlib
import importlib.metadata as metadata
import pathlib
import re
import runpy
import shlex

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from calrec_core.cli import build_parser
from components import IMAGE_COMPONENTS, IMAGE_EXTRAS, IMAGE_JAX_EXTRA, ImageSet
from components.images import CLIENT_LOCK_EXTRAS
from pipelines import load_pipeline_spec

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
# Packages a lock resolves outside constraints.txt (docker/locks.py).
OWN_PINS = runpy.run_path(str(DOCKER / "locks.py"))["OWN_PINS"]
read_pins = runpy.run_path(str(DOCKER / "pins.py"))["read_pins"]
SUBSTITUTIONS = {"${_REGISTRY}": "europe-docker.pkg.dev/acme/calrec", "${COMMIT_SHA}": "c0ffee1",
                 "${_PRESET}": "paper", "${_ROLES}": "configs/sample.yaml",
                 "${_ACCELERATOR}": "gpu", "${_TRAINING}": "container"}


def _lock(name: str) -> dict[str, tuple[str, list[str]]]:
    """Canonical name -> (version, hashes) of a hash lock."""
    text = (DOCKER / "locks" / f"{name}.txt").read_text().replace("\\\n", " ")
    pins = {}
    for line in text.splitlines():
        if line and not line.lstrip().startswith("#"):
            requirement, *options = line.split()
            name_, _, version = requirement.partition("==")
            pins[canonicalize_name(name_)] = (version, [option.split("=", 1)[1]
                                                        for option in options
                                                        if option.startswith("--hash=")])
    return pins


def _cloudbuild() -> dict:
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def _substitute(text: str) -> str:
    for key, value in SUBSTITUTIONS.items():
        text = text.replace(key, value)
    return text


@pytest.mark.parametrize("image", sorted(IMAGE_EXTRAS))
def test_each_dockerfile_installs_its_lock_before_the_source_as_a_numeric_user(image):
    text = (DOCKER / f"{image}.Dockerfile").read_text()
    lines = text.replace("\\\n", " ").splitlines()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", text, re.M), "pin the base image"
    installs = [shlex.split(line.split("pip install", 1)[1]) for line in lines
                if line.startswith("RUN ") and "pip install" in line]
    lock = f"docker/locks/{image}.txt"
    # First every locked wheel, hash-checked; then the package alone.
    assert installs[0] == ["--require-hashes", "--no-deps", "-r", lock]
    assert "--no-deps" in installs[1] and "." in installs[1]
    assert len(installs) == 2
    first_source = min(index for index, line in enumerate(lines)
                       if line.startswith("COPY ") and "calrec_core" in line)
    lock_install = next(index for index, line in enumerate(lines) if "--require-hashes" in line)
    assert lock_install < first_source, "dependencies must be installed before the source"
    assert not any(line.startswith("COPY . ") for line in lines)
    # Numeric, set after the installs and before anything runs as the user: non-root, but
    # root in the ingest image, whose Dataflow workers need it (test_cloud_images.py).
    (user,) = [line for line in lines if line.startswith("USER ")]
    if image == "calrec-ingest":
        assert user == "USER 0:0"
    else:
        assert re.fullmatch(r"USER [1-9][0-9]*:[1-9][0-9]*", user)
    assert lines.index(user) > max(i for i, line in enumerate(lines) if "pip install" in line)
    if "gemma.assemble()" in text:
        assert text.index(user) < text.index("gemma.assemble()")


@pytest.mark.parametrize("name", [*sorted(IMAGE_EXTRAS), "pipelines-client"])
def test_every_locked_wheel_is_pinned_with_hashes_within_the_tested_versions(name):
    lock = _lock(name)
    assert lock and all(version and hashes for version, hashes in lock.values())
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for _, hashes in lock.values()
               for h in hashes)
    assert "setuptools" in lock  # the package installs without build isolation
    constraints = read_pins()
    for package, (version, _) in lock.items():
        if package in constraints and package not in OWN_PINS.get(name, ()):
            assert version == constraints[package], (name, package)
    extras = (set(IMAGE_EXTRAS.get(name, ())) if name != "pipelines-client"
              else set(CLIENT_LOCK_EXTRAS))
    for line in metadata.requires("calrec"):
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in extras):
            package = canonicalize_name(requirement.name)
            assert package in lock, f"{name}: {requirement} is not locked"
            assert requirement.specifier.contains(lock[package][0], prereleases=True)


def test_locks_carry_each_images_jax_flavour_and_keep_groups_apart():
    assert {"jax-cuda12-plugin", "jax-cuda12-pjrt", "nvidia-cudnn-cu12"} <= set(
        _lock("calrec-cuda"))
    assert "libtpu" in _lock("calrec-tpu")
    for image, flavour in IMAGE_JAX_EXTRA.items():
        header = (DOCKER / "locks" / f"{image}.txt").read_text().splitlines()[0]
        assert (f"jax[{flavour}]" in header) == bool(flavour), image
    assert not any(name.startswith(("nvidia-", "libtpu")) for name in _lock("calrec"))
    # Only the CPU image carries the Vertex AI SDK (its "launch" extra: the custom-job
    # training launcher); ingestion's Beam stays in its own image. (Beam's gcp extra brings
    # aiplatform<2 into the ingest image; no step imports it there.)
    assert "launch" in IMAGE_EXTRAS["calrec"]
    for image in IMAGE_EXTRAS:
        assert ("google-cloud-aiplatform" in _lock(image)) == (
            image in ("calrec-ingest", "calrec")), image
        assert "kfp" in _lock(image), image
    assert "apache-beam" in _lock("calrec-ingest") and "apache-beam" not in _lock("calrec")
    assert "google-cloud-aiplatform" in _lock("pipelines-client")


def test_image_extras_exist_in_setup_py_and_the_components_they_run_import_here():
    declared = set(metadata.metadata("calrec").get_all("Provides-Extra"))
    for image, extras in IMAGE_EXTRAS.items():
        assert set(extras) <= declared, image
        for module in IMAGE_COMPONENTS[image]:
            importlib.import_module(module)
    steps = {module for modules in IMAGE_COMPONENTS.values() for module in modules}
    assert steps == {"components.configure", "components.data_version", "components.ingest",
                     "components.train", "components.evaluate", "components.report"}


def test_cloud_build_builds_smoke_tests_then_pushes_every_image_at_the_commit():
    build = _cloudbuild()
    steps = {step["id"]: step for step in build["steps"]}
    assert "pytest" in steps["test"]["args"][-1] and "ruff check" in steps["test"]["args"][-1]
    built = {}
    for step in build["steps"]:
        args = step.get("args", [])
        if step["name"].endswith("/docker") and args[:1] == ["build"]:
            assert "test" in step["waitFor"]
            built[args[args.index("-t") + 1]] = args[args.index("-f") + 1]
    expected = {f"${{_REGISTRY}}/{image}:${{COMMIT_SHA}}": f"docker/{image}.Dockerfile"
                for image in IMAGE_EXTRAS}
    assert built == expected
    assert set(build["images"]) == set(expected)
    for image in IMAGE_COMPONENTS:
        # Each smoke step runs inside its image (what it runs: test_cloud_images.py).
        smoke = steps[f"smoke-{image}"]
        assert f"build-{image}" in smoke["waitFor"]
        assert smoke["name"] == f"${{_REGISTRY}}/{image}:${{COMMIT_SHA}}"
        assert f"smoke-{image}" in steps["push"]["waitFor"]
    assert "${_REGISTRY}/$${image}:${COMMIT_SHA}" in steps["push"]["args"][-1]
    template = steps["template"]["args"][-1]
    assert "--require-hashes" in template and "docker/locks/pipelines-client.txt" in template
    assert 'pipeline upload --host "${_KFP_REPOSITORY}"' in template
    assert "-kfp.pkg.dev/" in build["substitutions"]["_KFP_REPOSITORY"]
    assert "_SUBMIT" in steps["submit"]["args"][-1]
    assert "raw_data_version" not in steps["submit"]["args"][-1]  # the run hashes the data


def test_compile_step_names_exactly_the_images_cloud_build_pushes(tmp_path, monkeypatch):
    build = _cloudbuild()
    (template,) = [step for step in build["steps"] if step["id"] == "template"]
    script = template["args"][-1].replace("\\\n", " ")
    (command,) = [line for line in script.splitlines() if "calrec pipeline compile" in line]
    args = shlex.split(_substitute(command))[1:]
    output = tmp_path / "calrec-pipeline.yaml"
    args[args.index("--output") + 1] = str(output)
    monkeypatch.chdir(REPO)
    parsed = build_parser().parse_args(args)
    assert parsed.handler(parsed) == 0
    spec = load_pipeline_spec(output)
    used = {executor["container"]["image"]
            for executor in spec["deploymentSpec"]["executors"].values()
            if "container" in executor}
    pushed = {_substitute(image) for image in build["images"]}
    tagged = ImageSet.tagged(SUBSTITUTIONS["${_REGISTRY}"], SUBSTITUTIONS["${COMMIT_SHA}"])
    # The ingest image, the CPU image for the report, the CUDA image for the heavy steps.
    assert used == {tagged.ingest, tagged.cpu, tagged.cuda}
    assert used <= pushed


def test_compile_refuses_placeholder_images_unless_allowed(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    for variable in ("CALREC_INGEST_IMAGE", "CALREC_IMAGE", "CALREC_CUDA_IMAGE"):
        monkeypatch.delenv(variable, raising=False)
    output = tmp_path / "spec.yaml"
    parser = build_parser()
    args = parser.parse_args(["pipeline", "compile", "--preset", "tiny", "--output", str(output)])
    with pytest.raises(SystemExit, match="placeholder images .*--allow-placeholder-image"):
        args.handler(args)
    assert not output.exists()
    args = parser.parse_args(["pipeline", "compile", "--preset", "tiny", "--output", str(output),
                              "--allow-placeholder-image"])
    assert args.handler(args) == 0 and output.exists()

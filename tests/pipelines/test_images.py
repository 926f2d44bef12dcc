"""The images, their pins and Cloud Build agree with setup.py and with what components run on.

No Docker engine runs here, so these check the build definitions themselves.
"""

from __future__ import annotations

import importlib.metadata as metadata
import pathlib
import re
import shlex

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from calrec_core.cli import build_parser
from components import IMAGE_EXTRAS, IMAGE_JAX_EXTRA, ImageSet
from pipelines import load_pipeline_spec

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
SUBSTITUTIONS = {"${_REGISTRY}": "europe-docker.pkg.dev/acme/calrec", "${COMMIT_SHA}": "c0ffee1",
                 "${_PRESET}": "paper", "${_ROLES}": "configs/sample.yaml",
                 "${_ACCELERATOR}": "gpu"}


def _pip_installs(dockerfile: pathlib.Path) -> list[list[str]]:
    """Arguments of every ``pip install`` in the Dockerfile's RUN lines (continuations joined)."""
    text = dockerfile.read_text().replace("\\\n", " ")
    return [shlex.split(line.split("pip install", 1)[1]) for line in text.splitlines()
            if line.startswith("RUN ") and "pip install" in line]


def _cloudbuild() -> dict:
    return yaml.safe_load((REPO / "cloudbuild.yaml").read_text())


def _substitute(text: str) -> str:
    for key, value in SUBSTITUTIONS.items():
        text = text.replace(key, value)
    return text


@pytest.mark.parametrize("image", sorted(IMAGE_EXTRAS))
def test_each_dockerfile_installs_its_extras_pinned_as_a_non_root_user(image):
    dockerfile = DOCKER / f"{image}.Dockerfile"
    text = dockerfile.read_text()
    assert re.search(r"^FROM python:\d+\.\d+\.\d+-slim-\w+$", text, re.M), "pin the base image"
    installs = _pip_installs(dockerfile)
    assert installs and all("--constraint" in args for args in installs)
    package = [arg for args in installs for arg in args if arg.startswith(".[")]
    assert package == [".[" + ",".join(IMAGE_EXTRAS[image]) + "]"]
    jax = [arg for args in installs for arg in args if arg.startswith("jax")]
    assert jax == ([f"jax[{IMAGE_JAX_EXTRA[image]}]"] if IMAGE_JAX_EXTRA[image] else [])
    # Steps run unprivileged; the checkpoint is assembled as that user, into its home.
    user_line = text.index("USER calrec")
    assert user_line < text.index("gemma.assemble()")
    assert all(text.index(line) < user_line for line in text.splitlines()
               if "pip install" in line)


def test_image_extras_exist_in_setup_py_and_cover_every_step():
    declared = set(metadata.metadata("calrec").get_all("Provides-Extra"))
    for image, extras in IMAGE_EXTRAS.items():
        assert set(extras) <= declared, image
    # The CPU image runs every step (ingest needs data, the report eval, all need kfp).
    assert set(IMAGE_EXTRAS["calrec"]) >= {"data", "train", "eval", "pipelines"}
    for image in ("calrec-cuda", "calrec-tpu"):
        assert set(IMAGE_EXTRAS[image]) >= {"train", "eval", "pipelines"}


def test_constraints_pin_every_requirement_of_the_images_within_setup_py_ranges():
    pins = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonicalize_name(name)] = version
    extras = {extra for image_extras in IMAGE_EXTRAS.values() for extra in image_extras}
    checked = 0
    for line in metadata.requires("calrec"):
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is not None and not any(marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} has no pin in docker/constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
        checked += 1
    assert checked >= 10
    assert {"pip", "setuptools"} <= set(pins)


def test_cloud_build_tests_then_builds_pushes_every_image_at_the_commit():
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
    assert "${_REGISTRY}/$${image}:${COMMIT_SHA}" in steps["push"]["args"][-1]
    assert "_SUBMIT" in steps["submit"]["args"][-1]


def test_compile_step_names_exactly_the_images_cloud_build_pushes(tmp_path, monkeypatch):
    build = _cloudbuild()
    (compile_step,) = [step for step in build["steps"] if step["id"] == "compile"]
    args = [_substitute(arg) for arg in compile_step["args"]]
    output = tmp_path / "calrec-pipeline.yaml"
    args[args.index("--output") + 1] = str(output)
    monkeypatch.chdir(REPO)
    parsed = build_parser().parse_args(args)
    assert parsed.handler(parsed) == 0
    spec = load_pipeline_spec(output)
    used = {executor["container"]["image"]
            for executor in spec["deploymentSpec"]["executors"].values()}
    pushed = {_substitute(image) for image in build["images"]}
    tagged = ImageSet.tagged(SUBSTITUTIONS["${_REGISTRY}"], SUBSTITUTIONS["${COMMIT_SHA}"])
    # CPU image for ingest and report, the CUDA image for training and evaluation.
    assert used == {tagged.cpu, tagged.cuda}
    assert used <= pushed

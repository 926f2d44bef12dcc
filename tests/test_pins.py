"""One pinned set: setup.py's ranges, constraints.txt, the venv, CI and the images' locks agree.

Everything here compares files of the repository with each other and with the installed venv;
nothing asks a package index what is newest, so a new release anywhere cannot fail these tests.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import pathlib
import re
import runpy
import shlex

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = pathlib.Path(__file__).resolve().parents[1]
PINS_MODULE = runpy.run_path(str(REPO / "docker" / "pins.py"))
read_pins = PINS_MODULE["read_pins"]
# Packages an image's lock resolves on its own, outside constraints.txt, and why.
OWN_PINS = runpy.run_path(str(REPO / "docker" / "locks.py"))["OWN_PINS"]
LOCKS = sorted((REPO / "docker" / "locks").glob("*.txt"))
EXTRAS = set(PINS_MODULE["EXTRAS"])


def _calrec_requirements() -> list[Requirement]:
    """setup.py's requirements that the development venv installs (base, `all`, `test`)."""
    found = []
    for line in metadata.requires("calrec"):
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or any(marker.evaluate({"extra": extra}) for extra in EXTRAS):
            found.append(requirement)
    return found


def test_every_requirement_of_setup_py_is_pinned_within_its_range():
    pins = read_pins()
    requirements = _calrec_requirements()
    assert len(requirements) > 20
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} is not in constraints.txt: run `make pins`"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]} outside {requirement}: run `make pins`")
    for requirement in map(Requirement, PINS_MODULE["EXTRA_REQUIREMENTS"]):
        assert requirement.specifier.contains(pins[canonicalize_name(requirement.name)])


def test_the_pins_are_exact_and_unique():
    lines = [line.strip() for line in (REPO / "constraints.txt").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+!-]+", line) for line in lines), [
        line for line in lines if "==" not in line]
    names = [canonicalize_name(line.split("==")[0]) for line in lines]
    assert len(names) == len(set(names))
    assert read_pins()["apache-beam"] == "2.77.0"  # changes only with a reviewed `make pins`


@pytest.mark.skipif(os.environ.get("CALREC_UNPINNED") == "1",
                    reason="make try-newest: the throw-away venv is unpinned on purpose")
def test_the_venv_runs_exactly_the_pinned_versions():
    """Every package of calrec's dependency closure in this venv is pinned, at its pin."""
    pins = read_pins()
    pending = [requirement.name for requirement in _calrec_requirements()]
    pending += [Requirement(line).name for line in PINS_MODULE["EXTRA_REQUIREMENTS"]]
    seen: set[str] = set()
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue  # a platform- or extra-specific requirement this venv does not take
        assert name in pins, f"{name}=={installed} is installed but not pinned"
        # A local label (torch's +cpu wheel) is the same release.
        assert installed.split("+")[0] == pins[name], (name, installed, pins[name])
        for line in metadata.requires(name) or ():
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    assert {"apache-beam", "jax", "flax", "kfp", "google-cloud-aiplatform", "pytest"} <= seen


@pytest.mark.parametrize("lock", LOCKS, ids=lambda path: path.stem)
def test_every_lock_shares_the_venvs_version_of_each_common_package(lock):
    pins = read_pins()
    locked = read_pins(lock)
    assert locked
    own = set(OWN_PINS.get(lock.stem, ()))
    differ = {name: (version, pins[name]) for name, version in locked.items()
              if name in pins and version != pins[name] and name not in own}
    assert not differ, f"{lock.name} differs from constraints.txt: {differ}; run `make pins`"
    # The named exception is real: the lock holds the package, at a version of its own.
    for name in own:
        assert name in locked and name in pins


def test_the_one_exception_is_the_ingest_images_vertex_sdk():
    """Beam's gcp extra needs google-cloud-aiplatform<2; the venv holds the client's 2.x."""
    assert OWN_PINS == {"calrec-ingest": ("google-cloud-aiplatform",)}
    ingest = read_pins(REPO / "docker" / "locks" / "calrec-ingest.txt")
    assert ingest["google-cloud-aiplatform"].split(".")[0] == "1"
    assert read_pins()["google-cloud-aiplatform"].split(".")[0] == "2"


def test_dataflow_is_launched_with_the_beam_its_workers_run():
    worker = read_pins(REPO / "docker" / "locks" / "calrec-ingest.txt")["apache-beam"]
    assert worker == read_pins()["apache-beam"]
    if os.environ.get("CALREC_UNPINNED") != "1":
        assert metadata.version("apache-beam") == worker


def _recipe(target: str) -> list[str]:
    """The shell lines of one Makefile target."""
    lines = (REPO / "Makefile").read_text().replace("\\\n", " ").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1:]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_make_venv_and_cloud_build_install_only_within_the_pins():
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^PINS := constraints\.txt$", makefile, re.M)
    assert re.search(r"^\$\(STAMP\): setup\.py \$\(PINS\)$", makefile, re.M), (
        "the venv must be rebuilt when the pins change")
    installs = [line for line in _recipe("$(STAMP)") if "pip install" in line]
    assert len(installs) >= 3 and all("--constraint $(PINS)" in line for line in installs)
    assert any('-e ".[all,test]"' in line for line in installs)
    (test_step,) = [step for step in yaml.safe_load((REPO / "cloudbuild.yaml").read_text())
                    ["steps"] if step["id"] == "test"]
    pip_lines = [shlex.split(line) for line in test_step["args"][-1].splitlines()
                 if line.strip().startswith("pip install")]
    assert pip_lines and all(
        words[words.index("--constraint") + 1] == "constraints.txt" for words in pip_lines)


def test_the_readme_python_is_the_pinned_python():
    assert PINS_MODULE["PYTHON_VERSION"] == "3.11"
    assert "**Python 3.11**" in (REPO / "README.md").read_text()
    assert re.search(r"^PYTHON \?= python3\.11$", (REPO / "Makefile").read_text(), re.M)
    assert "sys.version_info[:2] == (3, 11)" in (REPO / "Makefile").read_text()
    for dockerfile in (REPO / "docker").glob("*.Dockerfile"):
        assert re.search(r"^FROM python:3\.11\.\d+-slim", dockerfile.read_text(), re.M), dockerfile


def test_try_newest_never_touches_the_pins():
    recipe = " ".join(_recipe("try-newest"))
    assert "--constraint" not in recipe and "make pins" not in recipe
    assert [word for word in recipe.split() if word.endswith("pins.py")] == ["docker/pins.py"]
    assert "docker/pins.py --compare" in recipe  # reads the pins, writes nothing
    assert "--upgrade" in recipe and "pytest" in recipe and "CALREC_UNPINNED=1" in recipe
    assert "$(NEWEST)" in recipe and "rm -rf $(NEWEST)" in recipe

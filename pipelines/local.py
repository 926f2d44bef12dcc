"""Runs the whole DAG on KFP's local SubprocessRunner (no containers, no cloud).

Each step runs as a subprocess of this Python interpreter (``use_venv=False``: nothing is
pip-installed; the steps import the installed package). Caching: kfp 2.17's local runner keeps
a file cache (``<output>/cache``) keyed on each task's component, image, command, parameters
and input artifact URIs. A re-run with identical inputs therefore reuses every step, and the
cached outputs keep their first run's URIs, so downstream keys match too. The raw data enter
the key through ``raw_data_version``, a hash of the input files computed here, so changed data
re-run ingestion (and, through new artifact URIs, everything after it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import pathlib
import shutil
import warnings

from components import ImageSet
from pipelines.dag import build_pipeline, eval_categories


@dataclasses.dataclass(frozen=True)
class LocalRunResult:
    """Where a local run left its outputs."""

    report_markdown: pathlib.Path  # Copy of the report step's Markdown at <output>/report.md.
    report_html: pathlib.Path  # Copy of the report step's HTML at <output>/report.html.
    report_artifact: str  # URI of the report artifact inside the pipeline root.
    pipeline_root: pathlib.Path  # Every task's artifacts, one folder per run and task.


def fingerprint_files(folder) -> str:
    """SHA-256 over the relative names and contents of every file under ``folder``."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"raw data folder {folder} does not exist")
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode("utf-8") + b"\0")
        with path.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _check_docker_sdk() -> None:
    """kfp.local imports the Docker SDK (``docker``) when it can. Without the SDK, a checkout's
    root on sys.path (``python -m``) makes the repository's docker/ folder pass for it as an
    empty namespace package, and kfp.local then fails deep inside; say so plainly instead."""
    spec = importlib.util.find_spec("docker")
    if spec is not None and spec.origin is None:
        raise RuntimeError(
            "the 'docker' Python package (the Docker SDK kfp.local imports) is missing, and "
            f"{list(spec.submodule_search_locations)} stands in for it; install it with "
            "`pip install docker` (the 'pipelines' extra lists it)"
        )


def run_local(
    data_dir,
    roles: dict,
    output_dir,
    *,
    preset: str = "demo",
    categories: list[str] | None = None,
    parameters: dict | None = None,
    enable_caching: bool = True,
) -> LocalRunResult:
    """Runs the DAG over ``data_dir`` (raw files) with ``roles``; returns where the report is.

    ``parameters`` override pipeline parameters (names as in build_pipeline's signature).
    """
    _check_docker_sdk()
    from kfp import local

    data_dir = pathlib.Path(data_dir).resolve()
    output_dir = pathlib.Path(output_dir).resolve()
    categories = list(categories) if categories else eval_categories(roles)
    pipeline = build_pipeline(categories, roles, preset=preset, images=ImageSet())
    arguments = {"raw_data_uri": str(data_dir), "raw_data_version": fingerprint_files(data_dir)}
    unknown = sorted(set(parameters or {}) - set(pipeline.component_spec.inputs))
    if unknown:
        raise ValueError(f"unknown pipeline parameters {unknown}; the pipeline takes "
                         f"{sorted(pipeline.component_spec.inputs)}")
    arguments.update(parameters or {})
    pipeline_root = output_dir / "pipeline_root"
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(pipeline_root),
        enable_caching=enable_caching,
        cache_root=str(output_dir / "cache"),
    )
    with warnings.catch_warnings():
        # The steps name the project's container image; here they run in this interpreter.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # Display names matter on Vertex AI only; the local runner names tasks itself.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner")
        run = pipeline(**arguments)
    report, report_html = run.outputs["report"], run.outputs["report_html"]
    markdown_copy = output_dir / "report.md"
    html_copy = output_dir / "report.html"
    shutil.copyfile(report.path, markdown_copy)
    shutil.copyfile(report_html.path, html_copy)
    return LocalRunResult(markdown_copy, html_copy, report.uri, pipeline_root)

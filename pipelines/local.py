"""Runs the whole DAG on KFP's local SubprocessRunner (no containers, no cloud).

Each step runs as a subprocess of this Python interpreter (``use_venv=False``: nothing is
pip-installed; the steps import the installed package). Caching: kfp 2.17's local runner keeps
a file cache (``<output>/cache``) keyed on each task's component, image, command, parameters
and input artifact URIs. A re-run with identical inputs therefore reuses every step, and the
cached outputs keep their first run's URIs, so downstream keys match too. The raw data enter
the key through the never-cached raw-data-version step (a hash of the files' manifest), so
changed data re-run ingestion (and, through new artifact URIs, everything after it).
"""

from __future__ import annotations

import builtins
import dataclasses
import importlib.util
import pathlib
import shutil
import warnings

from calrec_core.experiment import ExperimentConfig
from components import ImageSet
from pipelines.dag import build_pipeline


@dataclasses.dataclass(frozen=True)
class LocalRunResult:
    """Where a local run left its outputs."""

    report_markdown: pathlib.Path  # Copy of the report step's Markdown at <output>/report.md.
    report_html: pathlib.Path  # Copy of the report step's HTML at <output>/report.html.
    report_artifact: str  # URI of the report artifact inside the pipeline root.
    pipeline_root: pathlib.Path  # Every task's artifacts, one folder per run and task.


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
    experiment: ExperimentConfig,
    output_dir,
    *,
    categories: list[str] | None = None,
    parameters: dict | None = None,
    enable_caching: bool = True,
) -> LocalRunResult:
    """Runs the DAG over ``data_dir`` (raw files) with ``experiment``; returns where the report
    is.

    ``parameters`` set operational pipeline parameters (names as in build_pipeline's
    signature; the experiment is ``experiment``'s alone); resumable training state goes to
    ``<output>/checkpoints`` unless they name a ``checkpoint_root``.
    """
    _check_docker_sdk()
    from kfp import local

    data_dir = pathlib.Path(data_dir).resolve()
    output_dir = pathlib.Path(output_dir).resolve()
    pipeline = build_pipeline(experiment, categories=categories, images=ImageSet())
    if not data_dir.is_dir():
        raise FileNotFoundError(f"raw data folder {data_dir} does not exist")
    parameters = dict(parameters or {})
    if "experiment" in parameters:
        raise ValueError("the experiment is run_local's own argument, not a parameter")
    unknown = sorted(set(parameters) - set(pipeline.component_spec.inputs))
    if unknown:
        raise ValueError(f"unknown pipeline parameters {unknown}; the pipeline takes "
                         f"{sorted(pipeline.component_spec.inputs)}")
    arguments = {"raw_data_uri": str(data_dir),
                 "checkpoint_root": str(output_dir / "checkpoints"), **parameters}
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
        # KFP indents print() while a task runs by swapping builtins.print; tasks of a
        # ParallelFor run in threads and can restore each other's swap, leaving every later
        # print of this process indented. Put the real one back.
        real_print = builtins.print
        try:
            run = pipeline(**arguments)
        finally:
            builtins.print = real_print
    report, report_html = run.outputs["report"], run.outputs["report_html"]
    markdown_copy = output_dir / "report.md"
    html_copy = output_dir / "report.html"
    shutil.copyfile(report.path, markdown_copy)
    shutil.copyfile(report_html.path, html_copy)
    return LocalRunResult(markdown_copy, html_copy, report.uri, pipeline_root)

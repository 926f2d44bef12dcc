"""Helpers the component functions import inside their containers.

Kept apart from the component definitions so a running step imports no more than it needs;
the functions here only translate between KFP artifacts and calrec_core's plain folders.
"""

from __future__ import annotations

import json
import math
import pathlib

# Vertex AI mounts Cloud Storage into every pipeline container under /gcs (Cloud Storage FUSE).
_GCS_PREFIX = "gs://"
_FUSE_ROOT = "/gcs/"


def local_path(uri: str) -> str:
    """A path the step can open: ``gs://bucket/x`` -> ``/gcs/bucket/x``; others unchanged."""
    if not uri:
        raise ValueError("empty path or URI")
    return _FUSE_ROOT + uri[len(_GCS_PREFIX):] if uri.startswith(_GCS_PREFIX) else uri


def beam_runner_is_remote(beam_args: list) -> bool:
    """True when ``beam_args`` pick a runner that reads and writes Cloud Storage itself."""
    runner = ""
    for index, arg in enumerate(beam_args):
        if arg.startswith("--runner="):
            runner = arg.split("=", 1)[1]
        elif arg == "--runner" and index + 1 < len(beam_args):
            runner = beam_args[index + 1]
    return runner.lower() not in ("", "directrunner", "direct", "prismrunner", "prism")


def json_metadata(value):
    """``value`` as artifact metadata: JSON types only, non-finite floats as strings."""
    if isinstance(value, dict):
        return {str(key): json_metadata(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_metadata(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, pathlib.PurePath):
        return str(value)
    return json.loads(json.dumps(value, default=str))


def log_numbers(metrics, values: dict) -> int:
    """Logs every finite number in ``values`` (nested keys joined by '.'); returns the count.

    The logged metrics are also written to the artifact's file: KFP's local cache treats an
    output whose file is missing as a cache miss, and a Metrics artifact has none otherwise.
    """
    logged = _log_flat(metrics, values, prefix="")
    with open(metrics.path, "w", encoding="utf-8") as stream:
        json.dump(metrics.metadata, stream, indent=2, sort_keys=True)
    return logged


def _log_flat(metrics, values: dict, prefix: str) -> int:
    logged = 0
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            logged += _log_flat(metrics, value, prefix=f"{name}.")
        elif (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value)):
            metrics.log_metric(name, float(value))
            logged += 1
    return logged


def artifact_subpath(path, artifact_path: str) -> str:
    """``path`` relative to the artifact folder, so lineage survives moving the artifact."""
    relative = pathlib.Path(path).resolve().relative_to(pathlib.Path(artifact_path).resolve())
    return relative.as_posix() or "."


def restore_integers(value):
    """Undoes the JSON round trip of pipeline parameters, which turns every int into a float."""
    if isinstance(value, dict):
        return {key: restore_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [restore_integers(item) for item in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def write_image_html(image_path, html_path: str, title: str) -> None:
    """An HTML page holding the PNG inline (artifact viewers show a single file)."""
    import base64
    import html

    encoded = base64.b64encode(pathlib.Path(image_path).read_bytes()).decode("ascii")
    pathlib.Path(html_path).write_text(
        f"<html><body><h2>{html.escape(title)}</h2>"
        f"<img src='data:image/png;base64,{encoded}'></body></html>",
        encoding="utf-8",
    )


def stage_summary(result) -> tuple[dict, dict]:
    """(artifact metadata, metrics) of a calrec_core.train StageResult.

    Absolute folders stay out of the metadata (the artifact's URI locates them); the metrics
    are the selected step and its selection metric under the metric's name.
    """
    import dataclasses

    summary = {key: value for key, value in dataclasses.asdict(result).items()
               if key not in ("checkpoint_dir", "run_dir")}
    metrics = {"selected_step": result.selected_step,
               f"selected_{result.metric_name}": result.best_metric}
    return json_metadata(summary), metrics

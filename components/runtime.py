"""Helpers the component functions import inside their containers.

Kept apart from the component definitions so a running step imports no more than it needs;
the functions here only translate between KFP artifacts and calrec_core's plain folders.
"""

from __future__ import annotations

import contextlib
import json
import math
import pathlib
import signal

# Vertex AI mounts Cloud Storage into every pipeline container under /gcs (Cloud Storage FUSE)
# and hands artifacts over by those paths; the steps give calrec_core the gs:// URIs instead,
# which it reads and writes itself (calrec_core.storage: Orbax writes checkpoints natively).
_GCS_PREFIX = "gs://"
_FUSE_ROOT = "/gcs/"


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


def gcs_uri(path: str) -> str:
    """An artifact's path as calrec_core takes it: ``/gcs/bucket/x`` (the FUSE mount) ->
    ``gs://bucket/x``; local paths unchanged."""
    return _GCS_PREFIX + path[len(_FUSE_ROOT):] if path.startswith(_FUSE_ROOT) else path


# Unresolved placeholders look like this (a backend without the placeholder leaves it as is).
_PLACEHOLDER_START = "{{$"


def work_dir(checkpoint_root: str, pipeline_root: str, run_id: str, task: str,
             output_path: str) -> str:
    """The run-scoped folder for ``task``'s resumable state (checkpoints, metrics, events).

    ``<checkpoint_root>/<run_id>/<task>``; an empty ``checkpoint_root`` means
    ``<pipeline_root>/checkpoints``. A retried task of the same run finds its checkpoints
    there and resumes. If the backend left the placeholders unresolved, the folder sits next
    to the task's output artifact (still per run and task, never inside the artifact).
    """
    root = checkpoint_root or (f"{pipeline_root.rstrip('/')}/checkpoints"
                               if pipeline_root and _PLACEHOLDER_START not in pipeline_root
                               else "")
    if not root or not run_id or _PLACEHOLDER_START in run_id:
        return str(pathlib.Path(output_path).parent / f"{task}-work")
    return f"{root.rstrip('/')}/{run_id}/{task}"


# What Vertex AI Pipelines replaces with the run's own project and region in task inputs.
PROJECT_PLACEHOLDER = "{{$.pipeline_google_cloud_project_id}}"
LOCATION_PLACEHOLDER = "{{$.pipeline_google_cloud_location}}"


def resolved_project_location(project: str, location: str) -> tuple[str, str]:
    """The project and region to start jobs in: the given ones, else (placeholders a backend
    left unresolved) the credentials' project and ``CLOUD_ML_REGION``."""
    import os

    if not project or _PLACEHOLDER_START in project:
        import google.auth

        project = google.auth.default()[1] or ""
    if not location or _PLACEHOLDER_START in location:
        location = os.environ.get("CLOUD_ML_REGION", "")
    if not project or not location:
        raise ValueError(f"no Google Cloud project or region to start the job in (project "
                         f"{project!r}, region {location!r}): run on Vertex AI Pipelines, or "
                         "set GOOGLE_CLOUD_PROJECT and CLOUD_ML_REGION")
    return project, location


def compilation_cache_dir(jax_cache_dir: str, checkpoint_root: str, pipeline_root: str) -> str:
    """Where JAX keeps compiled programs, shared by every run: ``jax_cache_dir``; "" means
    ``<checkpoint root>/jax-cache``; "off" disables the cache (returns "")."""
    if jax_cache_dir == "off":
        return ""
    if jax_cache_dir:
        return jax_cache_dir
    root = checkpoint_root or (f"{pipeline_root.rstrip('/')}/checkpoints"
                               if pipeline_root and _PLACEHOLDER_START not in pipeline_root
                               else "")
    return f"{root.rstrip('/')}/jax-cache" if root else ""


def enable_compilation_cache(directory: str) -> None:
    """JAX's persistent compilation cache in ``directory`` ("" leaves it off): retries and
    later runs reuse every program that took over a second to compile."""
    from calrec_core.model.compilation_cache import enable_compilation_cache as enable

    enable(directory)


class StepTimeout(TimeoutError):
    """The step ran past its time limit (KFP retries it; training resumes its checkpoint)."""


@contextlib.contextmanager
def deadline(hours: float, what: str):
    """Raises StepTimeout inside the block once it has run ``hours`` (0: no limit).

    Vertex AI has no per-task timeout for container steps, so the step keeps its own (on the
    main thread, through SIGALRM); the failure then goes through the task's retry policy.
    """
    if not hours or hours <= 0:
        yield
        return

    def expire(signum, frame):
        raise StepTimeout(f"{what} ran past its limit of {hours:g} h (pipeline parameter "
                          "'timeout_hours')")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, hours * 3600.0)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def export_model(selected_dir: str, model_path: str) -> None:
    """Copies the selected export (only it) into the Model artifact's folder."""
    from calrec_core import storage

    storage.copy_tree(selected_dir, gcs_uri(model_path))


def record_trained_model(model, training_metrics, loss_curves, *, stage: int, category: str,
                         init_model, machine: list, train_config: dict, result,
                         work: str) -> None:
    """What a training step (in its container or on a custom job) records: the Model
    artifact's metadata (stage, lineage, config, selection, where its work folder and
    TensorBoard events are), the selection metrics and the loss-curve page."""
    from calrec_core import storage
    from calrec_core.experiment.steps import loss_curves_html
    from calrec_core.train.metrics import TENSORBOARD_DIR

    summary, selection = stage_summary(result)
    work = gcs_uri(str(work))
    model.metadata["stage"] = stage
    if category:
        model.metadata["category"] = category
    if init_model is not None:
        model.metadata["init_model"] = init_model.uri
    model.metadata["machine"] = [str(value) for value in machine]
    model.metadata["config"] = json_metadata(train_config)
    model.metadata["result"] = summary
    model.metadata["checkpoint_subdir"] = "."  # the artifact is the export itself
    model.metadata["selected_step"] = int(result.selected_step)
    model.metadata["work_dir"] = work
    model.metadata["tensorboard_logdir"] = storage.join(work, TENSORBOARD_DIR)
    log_numbers(training_metrics, selection)
    label = "stage I" if stage == 1 else f"stage II {category}"
    with open(loss_curves.path, "w", encoding="utf-8") as stream:
        stream.write(loss_curves_html(work, label))

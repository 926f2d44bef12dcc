"""Vertex AI Pipelines: submit a compiled pipeline and manage recurring-retraining schedules.

Thin wiring over the google-cloud-aiplatform SDK (``PipelineJob``, ``PipelineJobSchedule``);
the SDK talks to Vertex AI and, before a run, checks or creates the pipeline-root bucket.
"""

from __future__ import annotations

import dataclasses
import re

# GCP resource labels: lowercase letters, digits, '_' and '-', at most 63 characters; keys
# start with a letter (https://cloud.google.com/compute/docs/labeling-resources).
_LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# Five cron fields, optionally after a CRON_TZ=/TZ= prefix (Vertex AI's schedule syntax).
_CRON = re.compile(r"^((CRON_TZ|TZ)=\S+\s+)?(\S+\s+){4}\S+$")


@dataclasses.dataclass(frozen=True)
class VertexTarget:
    """Where and as whom pipeline runs are created."""

    project: str  # Google Cloud project id.
    region: str  # Vertex AI region, e.g. "us-central1".
    pipeline_root: str  # gs:// folder for the runs' artifacts.
    service_account: str  # Service account the pipeline steps run as.
    api_endpoint: str | None = None  # Vertex AI endpoint (None: the region's public one).
    api_transport: str | None = None  # "grpc" or "rest" (None: the SDK's default).
    credentials: object = None  # google.auth credentials (None: application default).

    def __post_init__(self):
        problems = []
        if not self.project:
            problems.append("project is required")
        if not self.region:
            problems.append("region is required")
        if not self.pipeline_root.startswith("gs://"):
            problems.append(f"pipeline_root must be a gs:// URI, got {self.pipeline_root!r}")
        if "@" not in self.service_account:
            problems.append(
                f"service_account must be an e-mail address, got {self.service_account!r}"
            )
        if problems:
            raise ValueError("invalid Vertex AI target: " + "; ".join(problems))


def check_labels(labels: dict[str, str]) -> dict[str, str]:
    """Returns ``labels`` if every key and value is a valid GCP label, else raises."""
    bad = [f"{key}={value}" for key, value in labels.items()
           if not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(str(value))]
    if bad:
        raise ValueError(
            f"invalid labels {bad}: use lowercase letters, digits, '_' and '-' (keys start "
            "with a letter, at most 63 characters)"
        )
    return dict(labels)


_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


def _init(target: VertexTarget):
    """Configures the SDK for ``target``; returns the credentials every call passes on.

    Credentials are resolved here (application default when the target has none) rather than
    left to ``aiplatform.init``, which keeps whatever an earlier call in the process set.
    """
    import google.auth
    from google.cloud import aiplatform

    credentials = target.credentials or google.auth.default(scopes=list(_SCOPES))[0]
    aiplatform.init(
        project=target.project,
        location=target.region,
        credentials=credentials,
        api_endpoint=target.api_endpoint,
        api_transport=target.api_transport,
        service_account=target.service_account,
    )
    return credentials


def make_job(
    target: VertexTarget,
    template_path,
    *,
    parameter_values: dict | None = None,
    labels: dict[str, str] | None = None,
    enable_caching: bool | None = None,
    display_name: str = "calrec",
):
    """A not-yet-submitted ``aiplatform.PipelineJob`` of the compiled ``template_path``.

    ``enable_caching`` None keeps the compiled per-task settings (all cached); True/False
    overrides every task.
    """
    from google.cloud import aiplatform

    credentials = _init(target)
    return aiplatform.PipelineJob(
        display_name=display_name,
        template_path=str(template_path),
        pipeline_root=target.pipeline_root,
        parameter_values=parameter_values or {},
        labels=check_labels(labels or {}),
        enable_caching=enable_caching,
        project=target.project,
        location=target.region,
        credentials=credentials,
    )


def submit_pipeline(target: VertexTarget, template_path, **job_options) -> str:
    """Creates one pipeline run on Vertex AI; returns its resource name."""
    job = make_job(target, template_path, **job_options)
    job.submit(service_account=target.service_account)
    return job.resource_name


def create_schedule(
    target: VertexTarget,
    template_path,
    cron: str,
    *,
    schedule_name: str = "calrec-retrain",
    max_concurrent_run_count: int = 1,
    max_run_count: int | None = None,
    **job_options,
) -> str:
    """A cron schedule that re-runs the pipeline (recurring retraining); returns its name.

    Unless ``enable_caching`` is given, scheduled runs do not reuse cached steps: a retrain
    reads the raw data again even when its URI is unchanged.
    """
    if not _CRON.match(cron.strip()):
        raise ValueError(f"cron {cron!r} is not five fields (optionally after CRON_TZ=...)")
    job_options.setdefault("enable_caching", False)
    job = make_job(target, template_path, **job_options)
    schedule = job.create_schedule(
        cron=cron.strip(),
        display_name=schedule_name,
        max_concurrent_run_count=max_concurrent_run_count,
        max_run_count=max_run_count,
        service_account=target.service_account,
    )
    return schedule.resource_name


def list_schedules(target: VertexTarget, display_name: str | None = None) -> list[dict]:
    """The project's pipeline schedules in the region (name, display name, cron, state)."""
    from google.cloud import aiplatform

    credentials = _init(target)
    found = aiplatform.PipelineJobSchedule.list(
        filter=f'display_name="{display_name}"' if display_name else None,
        project=target.project, location=target.region, credentials=credentials,
    )
    return [{"name": schedule.resource_name, "display_name": schedule.display_name,
             "cron": schedule.cron, "state": schedule.state.name} for schedule in found]


def _schedule(target: VertexTarget, name: str):
    from google.cloud import aiplatform

    credentials = _init(target)
    return aiplatform.PipelineJobSchedule.get(
        schedule_id=name, project=target.project, location=target.region,
        credentials=credentials,
    )


def pause_schedule(target: VertexTarget, name: str) -> None:
    """Stops a schedule from starting runs (``name``: resource name or schedule id)."""
    _schedule(target, name).pause()


def resume_schedule(target: VertexTarget, name: str) -> None:
    """Lets a paused schedule start runs again."""
    _schedule(target, name).resume()


def delete_schedule(target: VertexTarget, name: str) -> None:
    """Deletes a schedule (runs it already started are kept)."""
    _schedule(target, name).delete()

"""Vertex AI Pipelines: submit, follow and cancel runs, and manage recurring-retraining schedules.

Thin wiring over the google-cloud-aiplatform SDK (``PipelineJob``, ``PipelineJobSchedule``,
Vertex AI Experiments); the SDK talks to Vertex AI and, before a run, checks or creates the
pipeline-root bucket. ``VertexTarget`` says where (every command needs it); ``RunSettings``
how runs are created (only submit and schedule create need it).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable

import yaml

from components.gcp_names import NETWORK, check_labels

# Five cron fields, optionally after a CRON_TZ=/TZ= prefix (Vertex AI's schedule syntax).
_CRON = re.compile(r"^((CRON_TZ|TZ)=\S+\s+)?(\S+\s+){4}\S+$")
# A Cloud KMS key (same region as the runs).
_KMS_KEY = re.compile(r"^projects/[^/]+/locations/(?P<location>[^/]+)/keyRings/[^/]+/"
                      r"cryptoKeys/[^/]+$")
# Experiment names: lowercase letters, digits and '-', at most 128 characters.
_EXPERIMENT = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
# Run states after which nothing changes.
FINAL_STATES = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED",
                "PIPELINE_STATE_CANCELLED")
_SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)


@dataclasses.dataclass(frozen=True)
class VertexTarget:
    """Which Vertex AI project and region, through which endpoint, as whom."""

    project: str  # Google Cloud project id.
    region: str  # Vertex AI region, e.g. "us-central1".
    api_endpoint: str | None = None  # Vertex AI endpoint (None: the region's public one).
    api_transport: str | None = None  # "grpc" or "rest" (None: the SDK's default).
    credentials: object = None  # google.auth credentials (None: application default).

    def __post_init__(self):
        problems = [f"{name} is required" for name in ("project", "region")
                    if not getattr(self, name)]
        if problems:
            raise ValueError("invalid Vertex AI target: " + "; ".join(problems))

    def console_url(self, run: str) -> str:
        """The Google Cloud console page of a pipeline run (resource name or id)."""
        return (f"https://console.cloud.google.com/vertex-ai/locations/{self.region}/pipelines/"
                f"runs/{run.rsplit('/', 1)[-1]}?project={self.project}")

    def run_name(self, run: str) -> str:
        """The full resource name of a run given by resource name or id."""
        if "/" in run:
            return run
        return f"projects/{self.project}/locations/{self.region}/pipelineJobs/{run}"


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How runs are created: artifacts, identity, network, encryption, experiment."""

    pipeline_root: str  # gs:// folder for the runs' artifacts.
    service_account: str  # Service account the pipeline steps run as.
    network: str | None = None  # VPC peered with Vertex AI: projects/NUMBER/global/networks/N.
    encryption_key: str | None = None  # Cloud KMS key (CMEK) for the run and its artifacts.
    experiment: str | None = None  # Vertex AI Experiment the runs are registered in.

    def __post_init__(self):
        problems = []
        if not self.pipeline_root.startswith("gs://"):
            problems.append(f"pipeline_root must be a gs:// URI, got {self.pipeline_root!r}")
        if "@" not in self.service_account:
            problems.append(
                f"service_account must be an e-mail address, got {self.service_account!r}"
            )
        if self.network and not NETWORK.match(self.network):
            problems.append(f"network must be projects/PROJECT_NUMBER/global/networks/NAME, "
                            f"got {self.network!r}")
        if self.encryption_key and not _KMS_KEY.match(self.encryption_key):
            problems.append("encryption_key must be projects/P/locations/L/keyRings/R/"
                            f"cryptoKeys/K, got {self.encryption_key!r}")
        if self.experiment and not _EXPERIMENT.match(self.experiment):
            problems.append("experiment must be lowercase letters, digits and '-', got "
                            f"{self.experiment!r}")
        if problems:
            raise ValueError("invalid run settings: " + "; ".join(problems))

    def check_region(self, region: str) -> None:
        """Vertex AI only accepts a CMEK key of the runs' own region."""
        match = _KMS_KEY.match(self.encryption_key or "")
        if match and match["location"] != region:
            raise ValueError(f"encryption key {self.encryption_key} is in "
                             f"{match['location']}, the runs in {region}: use a key there")


def check_experiment(template_path, parameter_values: dict | None) -> None:
    """Refuses an invalid ``experiment`` parameter, or one whose roles do not make the compiled
    categories 'eval' (the run would fail at once otherwise; the configure step checks again
    at run time)."""
    from calrec_core.experiment import ExperimentConfig
    from calrec_core.experiment.steps import check_compiled_categories
    from pipelines.dag import compiled_categories

    experiment = (parameter_values or {}).get("experiment")
    if experiment is None:
        return  # the compiled default, built with the categories
    with open(template_path, encoding="utf-8") as stream:
        spec = yaml.safe_load(stream)
    check_compiled_categories(ExperimentConfig.from_dict(experiment), compiled_categories(spec))


def _init(target: VertexTarget, settings: RunSettings | None = None):
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
        service_account=settings.service_account if settings else None,
    )
    return credentials


def make_job(
    target: VertexTarget,
    settings: RunSettings,
    template_path,
    *,
    parameter_values: dict | None = None,
    labels: dict[str, str] | None = None,
    enable_caching: bool | None = None,
    display_name: str = "calrec",
):
    """A not-yet-submitted ``aiplatform.PipelineJob`` of the compiled ``template_path``.

    ``enable_caching`` None keeps the compiled per-task settings; True/False overrides every
    task. Raises before any request when the experiment, labels or CMEK region do not fit,
    or when ``accelerator_type`` asks a pipeline step for a TPU.
    """
    import datetime
    import secrets

    from google.cloud import aiplatform

    from pipelines.dag import check_step_accelerator_type

    labels = check_labels(labels or {})
    settings.check_region(target.region)
    check_experiment(template_path, parameter_values)
    check_step_accelerator_type((parameter_values or {}).get("accelerator_type"))
    credentials = _init(target, settings)
    # The SDK's default id has one-second resolution: two submits in a second would collide.
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d%H%M%S")
    job_id = f"{_id_prefix(display_name)}-{stamp}-{secrets.token_hex(3)}"
    return aiplatform.PipelineJob(
        display_name=display_name,
        job_id=job_id,
        template_path=str(template_path),
        pipeline_root=settings.pipeline_root,
        parameter_values=parameter_values or {},
        labels=labels,
        enable_caching=enable_caching,
        encryption_spec_key_name=settings.encryption_key,
        project=target.project,
        location=target.region,
        credentials=credentials,
    )


def _id_prefix(display_name: str) -> str:
    """A display name as the start of a job id (lowercase letters, digits, '-')."""
    prefix = re.sub(r"[^a-z0-9-]+", "-", display_name.lower()).strip("-")[:100]
    return prefix if prefix and prefix[0].isalnum() else "calrec"


def submit_pipeline(target: VertexTarget, settings: RunSettings, template_path,
                    **job_options) -> str:
    """Creates one pipeline run (registered in ``settings.experiment`` if set); returns its
    resource name."""
    job = make_job(target, settings, template_path, **job_options)
    job.submit(service_account=settings.service_account, network=settings.network,
               experiment=settings.experiment)
    return job.resource_name


def _get_job(target: VertexTarget, run: str):
    from google.cloud import aiplatform

    credentials = _init(target)
    return aiplatform.PipelineJob.get(target.run_name(run), project=target.project,
                                      location=target.region, credentials=credentials)


def run_status(target: VertexTarget, run: str) -> dict:
    """State, times, error, labels (e.g. Cloud Build's commit=) and per-task states of a run
    (resource name or id)."""
    job = _get_job(target, run)
    resource = job.gca_resource
    tasks = [{"task": detail.task_name, "state": detail.state.name}
             for detail in resource.job_detail.task_details if detail.task_name]
    status = {"name": resource.name, "display_name": resource.display_name,
              "state": resource.state.name, "console": target.console_url(resource.name),
              "tasks": tasks}
    for field in ("create_time", "start_time", "end_time"):
        value = getattr(resource, field)
        if value:
            status[field] = value.isoformat()
    if resource.error.message:
        status["error"] = resource.error.message
    if resource.labels:
        status["labels"] = dict(resource.labels)
    return status


def cancel_run(target: VertexTarget, run: str) -> None:
    """Asks Vertex AI to cancel a run (it ends in PIPELINE_STATE_CANCELLED)."""
    _get_job(target, run).cancel()


def wait_for_run(target: VertexTarget, run: str, *, poll_seconds: float = 30.0,
                 on_change: Callable[[dict], None] | None = None,
                 timeout_seconds: float | None = None) -> dict:
    """Polls a run until it reaches a final state; returns its last status.

    ``on_change`` gets every status whose state (or task states) differ from the previous.
    """
    began = time.monotonic()
    previous = None
    while True:
        status = run_status(target, run)
        seen = (status["state"], tuple((t["task"], t["state"]) for t in status["tasks"]))
        if seen != previous and on_change:
            on_change(status)
        previous = seen
        if status["state"] in FINAL_STATES:
            return status
        if timeout_seconds is not None and time.monotonic() - began > timeout_seconds:
            raise TimeoutError(f"{status['name']} still {status['state']} after "
                               f"{timeout_seconds:g} s")
        time.sleep(poll_seconds)


def create_schedule(
    target: VertexTarget,
    settings: RunSettings,
    template_path,
    cron: str,
    *,
    schedule_name: str = "calrec-retrain",
    max_concurrent_run_count: int = 1,
    max_run_count: int | None = None,
    **job_options,
) -> str:
    """A cron schedule that re-runs the pipeline (recurring retraining); returns its name.

    Each scheduled run hashes the raw files again (the raw-data-version step is never
    cached), so ingestion and training re-run exactly when the data changed.
    """
    if not _CRON.match(cron.strip()):
        raise ValueError(f"cron {cron!r} is not five fields (optionally after CRON_TZ=...)")
    job = make_job(target, settings, template_path, **job_options)
    schedule = job.create_schedule(
        cron=cron.strip(),
        display_name=schedule_name,
        max_concurrent_run_count=max_concurrent_run_count,
        max_run_count=max_run_count,
        service_account=settings.service_account,
        network=settings.network,
    )
    return schedule.resource_name


def list_schedules(target: VertexTarget, filter: str | None = None,
                   pipeline_name: str | None = "calrec") -> list[dict]:
    """The region's pipeline schedules of ``pipeline_name`` (None: of any pipeline).

    ``filter`` is a Vertex AI list filter, e.g. ``display_name="calrec-weekly"`` or
    ``state="PAUSED"``; it narrows the server-side listing of pipeline schedules.
    """
    from google.cloud import aiplatform

    credentials = _init(target)
    expression = "create_pipeline_job_request:*"
    if filter:
        expression += f" AND ({filter})" if " OR " in filter else f" AND {filter}"
    found = aiplatform.PipelineJobSchedule.list(
        filter=expression, project=target.project, location=target.region,
        credentials=credentials,
    )
    listed = []
    for schedule in found:
        resource = schedule.gca_resource
        spec = resource.create_pipeline_job_request.pipeline_job.pipeline_spec
        name = (spec.get("pipelineInfo") or {}).get("name") if spec else None
        if pipeline_name and name != pipeline_name:
            continue
        listed.append({"name": resource.name, "display_name": resource.display_name,
                       "pipeline": name, "cron": resource.cron, "state": resource.state.name})
    return listed


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

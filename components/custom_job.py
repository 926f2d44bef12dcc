"""Training on a Vertex AI custom job: the request body, the worker command, and a launcher
that creates the job, follows it to its end and cancels it when the waiting step is stopped.

A pipeline container gets one host; a custom job gets a worker pool of several (GPU or CPU
machines) or a multi-host Cloud TPU slice, every host running the same ``calrec train``
command. calrec_core.train.distributed turns Vertex AI's ``CLUSTER_SPEC`` (worker pool 0 =
process 0, worker pool 1 = processes 1..N-1) or the TPU slice into one JAX job, whose
process 0 alone writes the metrics, the export and ``result.json``.

Machine rules follow Vertex AI's custom-training documentation (configure compute resources,
distributed training, training with TPU VMs):

* TPU machine types carry their chips in the name (ct5lp-hightpu-1t/4t/8t: v5e,
  ct5p-hightpu-4t: v5p, ct6e-standard-1t/4t/8t: v6e) and take no acceleratorType; a slice of
  several hosts is one worker pool of replicaCount 1 with ``machineSpec.tpuTopology`` (e.g.
  ct5lp-hightpu-4t with 4x4: 16 chips on 4 hosts). ``cloud-tpu`` (v2/v3) is the exception: it
  takes acceleratorType TPU_V2 or TPU_V3 with acceleratorCount 8, and no topology.
* GPU machine types come with a fixed number of one GPU model (g2: NVIDIA_L4, a2-highgpu /
  a2-megagpu: NVIDIA_TESLA_A100, a2-ultragpu: NVIDIA_A100_80GB, a3-highgpu: NVIDIA_H100_80GB,
  ...); n1 machines take T4, V100, P100 or P4 GPUs optionally.
* N hosts are worker pool 0 with replicaCount 1 (the primary) plus worker pool 1 with
  replicaCount N-1, both with the same machine and container spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import re
import signal
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from components.gcp_names import NETWORK, check_labels

# The project's CLI, installed in every image as a console script.
WORKER_EXECUTABLE = "calrec"
# A job's states after which nothing changes; only SUCCEEDED is a success.
FINAL_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED")
SUCCEEDED = "JOB_STATE_SUCCEEDED"
# Polls that may fail in a row (the service briefly unavailable) before the wait gives up.
POLL_FAILURES_TOLERATED = 5

# TPU machine type -> (chips per host, topology dimensions); see the module doc.
_TPU_MACHINES = {
    "ct5lp-hightpu-1t": (1, 2), "ct5lp-hightpu-4t": (4, 2), "ct5lp-hightpu-8t": (8, 2),
    "ct5p-hightpu-4t": (4, 3),
    "ct6e-standard-1t": (1, 2), "ct6e-standard-4t": (4, 2), "ct6e-standard-8t": (8, 2),
}
# The v2/v3 TPU machine type: its accelerators are named, 8 cores each host.
_CLOUD_TPU = "cloud-tpu"
_CLOUD_TPU_ACCELERATORS = ("TPU_V2", "TPU_V3")
_CLOUD_TPU_COUNT = 8
# GPU machine families (name pattern) -> the GPU model they come with.
_GPU_FAMILIES = (
    (re.compile(r"^g2-standard-\d+$"), "NVIDIA_L4"),
    (re.compile(r"^a2-(highgpu-\d+g|megagpu-16g)$"), "NVIDIA_TESLA_A100"),
    (re.compile(r"^a2-ultragpu-\d+g$"), "NVIDIA_A100_80GB"),
    (re.compile(r"^a3-highgpu-\d+g$"), "NVIDIA_H100_80GB"),
    (re.compile(r"^a3-megagpu-8g$"), "NVIDIA_H100_MEGA_80GB"),
    (re.compile(r"^a3-ultragpu-8g$"), "NVIDIA_H200_141GB"),
)
# G2 machines hold one L4 up to g2-standard-32, then 2, 4 and 8.
_G2_GPUS = {24: 2, 48: 4, 96: 8}
# N1 machines take these GPUs (1, 2, 4 or 8 of them) or none.
_N1_GPUS = ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_V100", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4")
_GPU_COUNTS = (1, 2, 4, 8)


def is_tpu_machine(machine_type: str) -> bool:
    """True for a Cloud TPU machine type (its chips come with the machine)."""
    return machine_type in _TPU_MACHINES or machine_type == _CLOUD_TPU


def _gpu_model(machine_type: str) -> str | None:
    """The GPU model a GPU machine type comes with (None: not such a machine type)."""
    return next((gpu for pattern, gpu in _GPU_FAMILIES if pattern.match(machine_type)), None)


def _bundled_gpus(machine_type: str) -> int:
    if machine_type.startswith("g2-standard-"):
        return _G2_GPUS.get(int(machine_type.rsplit("-", 1)[1]), 1)
    return int(re.search(r"-(\d+)g$", machine_type).group(1))


def _topology_chips(topology: str, dimensions: int, machine_type: str) -> int:
    parts = topology.lower().split("x")
    if len(parts) != dimensions or not all(part.isdigit() and int(part) > 0 for part in parts):
        shape = "x".join("AB"[:dimensions] if dimensions == 2 else "ABC")
        raise ValueError(f"tpu_topology {topology!r} does not fit {machine_type}: it takes "
                         f"{dimensions} dimensions, {shape} (e.g. "
                         f"{'4x4' if dimensions == 2 else '2x2x2'})")
    return math.prod(int(part) for part in parts)


@dataclasses.dataclass(frozen=True)
class WorkerPool:
    """The machines of a training job: one machine spec, ``hosts`` of them in all."""

    # Vertex AI machine type, e.g. "ct5lp-hightpu-4t", "g2-standard-8", "n2-standard-8".
    machine_type: str
    # Hosts of a GPU or CPU job (pool 0: one, pool 1: the rest); 1 on TPU (topology says).
    replica_count: int = 1
    # GPU model (or TPU_V2/TPU_V3 on cloud-tpu); "" for none and for the ct* TPU types.
    accelerator_type: str = ""
    # Accelerators per host with accelerator_type (0 with none).
    accelerator_count: int = 0
    # Shape of a multi-host TPU slice, e.g. "4x4" (v5e, v6e) or "2x2x2" (v5p); "" = one host.
    tpu_topology: str = ""

    def __post_init__(self):
        problems = self._problems()
        if problems:
            raise ValueError(f"impossible worker pool {self.describe()}: "
                             + "; ".join(problems))

    def describe(self) -> str:
        accelerators = (f" + {self.accelerator_count} x {self.accelerator_type}"
                        if self.accelerator_type or self.accelerator_count else "")
        topology = f" topology {self.tpu_topology}" if self.tpu_topology else ""
        return f"{self.replica_count} x {self.machine_type or '?'}{accelerators}{topology}"

    def _problems(self) -> list[str]:
        machine, kind, count = self.machine_type, self.accelerator_type, self.accelerator_count
        if not machine:
            return ["machine_type is required"]
        problems = []
        if not isinstance(self.replica_count, int) or self.replica_count < 1:
            problems.append(f"replica_count must be >= 1, got {self.replica_count!r}")
        if count < 0:
            problems.append(f"accelerator_count must be >= 0, got {count}")
        elif bool(kind) != bool(count):
            problems.append("accelerator_type and accelerator_count go together (a type with "
                            "a count >= 1, or neither)")
        if machine in _TPU_MACHINES:
            chips, dimensions = _TPU_MACHINES[machine]
            if kind or count:
                problems.append(f"{machine} carries its {chips} TPU chip(s) in the machine "
                                "type: leave accelerator_type and accelerator_count empty")
            if self.tpu_topology:
                total = _topology_chips(self.tpu_topology, dimensions, machine)
                if total < chips or total % chips:
                    problems.append(f"tpu_topology {self.tpu_topology} ({total} chips) is not "
                                    f"a whole number of {machine} hosts ({chips} chips each)")
        elif machine == _CLOUD_TPU:
            if kind not in _CLOUD_TPU_ACCELERATORS or count != _CLOUD_TPU_COUNT:
                problems.append(f"{_CLOUD_TPU} takes accelerator_type TPU_V2 or TPU_V3 with "
                                f"accelerator_count {_CLOUD_TPU_COUNT}")
            if self.tpu_topology:
                problems.append(f"{_CLOUD_TPU} (v2/v3) takes no tpu_topology")
        else:
            if self.tpu_topology:
                problems.append(f"tpu_topology is for TPU machine types, not {machine}")
            problems += self._gpu_problems()
        if is_tpu_machine(machine) and self.replica_count != 1:
            problems.append("a TPU job is one worker pool of replica_count 1: ask for more "
                            "hosts with tpu_topology (e.g. ct5lp-hightpu-4t with 4x4 is 4 "
                            "hosts)")
        return problems

    def _gpu_problems(self) -> list[str]:
        machine, kind, count = self.machine_type, self.accelerator_type, self.accelerator_count
        model = _gpu_model(machine)
        if kind.startswith("TPU_"):
            return [f"{kind} is a TPU accelerator: use a TPU machine type (ct5lp-hightpu-*, "
                    f"ct5p-hightpu-4t, ct6e-standard-*, {_CLOUD_TPU})"]
        if model is not None:
            bundled = _bundled_gpus(machine)
            if kind != model or count != bundled:
                return [f"{machine} comes with {bundled} x {model}: set accelerator_type "
                        f"{model} and accelerator_count {bundled}"]
            return []
        if machine.startswith("n1-"):
            if kind and (kind not in _N1_GPUS or count not in _GPU_COUNTS):
                return [f"n1 machines take 1, 2, 4 or 8 of {', '.join(_N1_GPUS)}"]
            return []
        if kind and re.match(r"^(n2|n2d|e2|c2|c2d|c3|n4|m1|m2)-", machine):
            return [f"{machine} takes no accelerators: use a GPU machine type (g2-standard-*, "
                    "a2-highgpu-*, a3-highgpu-8g, or n1-* with a GPU)"]
        return []

    @property
    def hosts(self) -> int:
        """Machines the job runs on, i.e. JAX processes (one per host)."""
        if self.machine_type in _TPU_MACHINES and self.tpu_topology:
            chips, dimensions = _TPU_MACHINES[self.machine_type]
            return _topology_chips(self.tpu_topology, dimensions, self.machine_type) // chips
        return self.replica_count

    def machine_spec(self) -> dict:
        """The ``machineSpec`` of every worker pool (REST JSON)."""
        spec = {"machineType": self.machine_type}
        if self.accelerator_type:
            spec["acceleratorType"] = self.accelerator_type
            spec["acceleratorCount"] = self.accelerator_count
        if self.tpu_topology:
            spec["tpuTopology"] = self.tpu_topology.lower()
        return spec

    def worker_pool_specs(self, container_spec: Mapping) -> list[dict]:
        """Pool 0 (the primary, replicaCount 1) and, for N > 1 hosts, pool 1 (N - 1)."""
        pool = {"machineSpec": self.machine_spec(), "containerSpec": dict(container_spec)}
        pools = [{**pool, "replicaCount": 1}]
        if self.replica_count > 1:
            pools.append({**pool, "replicaCount": self.replica_count - 1})
        return pools


def custom_job_body(
    display_name: str,
    image_uri: str,
    command: Sequence[str],
    *,
    machine_type: str,
    replica_count: int = 1,
    accelerator_type: str = "",
    accelerator_count: int = 0,
    tpu_topology: str = "",
    args: Sequence[str] = (),
    environment: Mapping[str, str] | None = None,
    service_account: str = "",
    network: str = "",
    timeout_seconds: float = 0,
    base_output_directory: str = "",
    labels: Mapping[str, str] | None = None,
    restart_job_on_worker_restart: bool = False,
) -> dict:
    """The CustomJob resource to create (Vertex AI v1 REST JSON), refusing what cannot run.

    Every host runs ``image_uri`` with ``command`` + ``args``; ``timeout_seconds`` 0 keeps
    Vertex AI's limit (7 days); ``restart_job_on_worker_restart`` restarts every host when one
    restarts (a multi-host JAX job cannot go on without it).
    """
    pool = WorkerPool(machine_type=machine_type, replica_count=replica_count,
                      accelerator_type=accelerator_type, accelerator_count=accelerator_count,
                      tpu_topology=tpu_topology)
    problems = []
    if not display_name or len(display_name) > 128:
        problems.append("display_name must be 1 to 128 characters")
    if not image_uri:
        problems.append("image_uri is required")
    if not command:
        problems.append("the worker command is required")
    if service_account and "@" not in service_account:
        problems.append(f"service_account must be an e-mail address, got {service_account!r}")
    if network and not NETWORK.match(network):
        problems.append(f"network must be projects/PROJECT_NUMBER/global/networks/NAME, got "
                        f"{network!r}")
    if timeout_seconds < 0:
        problems.append(f"timeout_seconds must be >= 0, got {timeout_seconds}")
    if base_output_directory and not base_output_directory.startswith("gs://"):
        problems.append(f"base_output_directory must be a gs:// URI, got "
                        f"{base_output_directory!r}")
    if problems:
        raise ValueError("invalid custom job: " + "; ".join(problems))
    container = {"imageUri": image_uri, "command": list(command)}
    if args:
        container["args"] = list(args)
    if environment:
        container["env"] = [{"name": name, "value": str(value)}
                            for name, value in environment.items()]
    spec: dict = {"workerPoolSpecs": pool.worker_pool_specs(container)}
    scheduling = {}
    if timeout_seconds:
        scheduling["timeout"] = f"{int(math.ceil(timeout_seconds))}s"
    if restart_job_on_worker_restart:
        scheduling["restartJobOnWorkerRestart"] = True
    if scheduling:
        spec["scheduling"] = scheduling
    if service_account:
        spec["serviceAccount"] = service_account
    if network:
        spec["network"] = network
    if base_output_directory:
        spec["baseOutputDirectory"] = {"outputUriPrefix": base_output_directory}
    body = {"displayName": display_name, "jobSpec": spec}
    if labels:
        body["labels"] = {key: str(value) for key, value in check_labels(labels).items()}
    return body


def train_command(stage: int, data: str, output: str, train_config: str, *,
                  category: str = "", init: str = "", compilation_cache: str = "") -> list[str]:
    """``calrec train`` as every host of the job runs it (all locations gs:// URIs)."""
    if stage not in (1, 2):
        raise ValueError(f"stage must be 1 or 2, got {stage!r}")
    if (stage == 2) != bool(category):
        raise ValueError("Stage II, and only it, takes a category")
    command = [WORKER_EXECUTABLE, "train", "--stage", str(stage), "--data", data,
               "--output", output, "--train-config", train_config]
    if category:
        command += ["--category", category]
    if init:
        command += ["--init", init]
    if compilation_cache:
        command += ["--compilation-cache", compilation_cache]
    return command


class CustomJobError(RuntimeError):
    """The custom job ended without succeeding (FAILED, CANCELLED, EXPIRED, ...)."""


class Terminated(BaseException):
    """SIGTERM reached the waiting process (a pipeline run was cancelled)."""


def default_endpoint(location: str) -> str:
    """The regional Vertex AI endpoint."""
    return f"{location}-aiplatform.googleapis.com"


def resource_uri(endpoint: str, name: str) -> str:
    """The job's REST URI, as google-cloud-pipeline-components records it."""
    base = endpoint if "://" in endpoint else f"https://{endpoint}"
    return f"{base.rstrip('/')}/v1/{name}"


def write_gcp_resources(path: str, endpoint: str, name: str) -> None:
    """The ``gcp_resources`` output Vertex AI Pipelines reads to show and cancel the job."""
    import pathlib

    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps({"resources": [
        {"resourceType": "CustomJob", "resourceUri": resource_uri(endpoint, name)}]}))


def job_client(location: str, *, api_endpoint: str | None = None,
               api_transport: str | None = None, credentials=None):
    """A ``JobServiceClient`` on ``location``'s endpoint (or ``api_endpoint``)."""
    from google.cloud import aiplatform_v1

    endpoint = api_endpoint or default_endpoint(location)
    return aiplatform_v1.JobServiceClient(credentials=credentials, transport=api_transport,
                                          client_options={"api_endpoint": endpoint})


@contextlib.contextmanager
def _sigterm_raises():
    """SIGTERM raises Terminated inside the block (main thread only), so the job is
    cancelled on the way out instead of being left running."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_custom_job(
    body: Mapping,
    *,
    project: str,
    location: str,
    api_endpoint: str | None = None,
    api_transport: str | None = None,
    credentials=None,
    poll_seconds: float = 30.0,
    gcp_resources: str | None = None,
    on_state: Callable[[str], None] | None = None,
):
    """Creates the custom job ``body`` (custom_job_body's) and waits for its end.

    Returns the finished ``aiplatform_v1.CustomJob``; raises CustomJobError (naming the job
    and Vertex AI's error message) unless it succeeded. Anything that stops the wait (SIGTERM,
    KeyboardInterrupt, a step timeout) cancels the job before it propagates. ``on_state`` gets
    each new state; ``gcp_resources`` is written as soon as the job exists.
    """
    from google.api_core import exceptions as api_exceptions
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format

    if poll_seconds <= 0:
        raise ValueError(f"poll_seconds must be > 0, got {poll_seconds}")
    try:
        job = aiplatform_v1.CustomJob.wrap(json_format.ParseDict(
            dict(body), aiplatform_v1.CustomJob.pb(aiplatform_v1.CustomJob())))
    except json_format.ParseError as error:
        raise ValueError(f"the custom job is not a Vertex AI CustomJob: {error}") from None
    endpoint = api_endpoint or default_endpoint(location)
    client = job_client(location, api_endpoint=endpoint, api_transport=api_transport,
                        credentials=credentials)
    created = client.create_custom_job(parent=f"projects/{project}/locations/{location}",
                                       custom_job=job)
    name = created.name
    if gcp_resources:
        write_gcp_resources(gcp_resources, endpoint, name)
    state, failures = created.state.name, 0
    if on_state:
        on_state(state)
    with _sigterm_raises():
        try:
            while True:
                try:
                    current = client.get_custom_job(name=name)
                    failures = 0
                except (api_exceptions.ServiceUnavailable, api_exceptions.DeadlineExceeded,
                        api_exceptions.InternalServerError):
                    failures += 1
                    if failures > POLL_FAILURES_TOLERATED:
                        raise
                    time.sleep(poll_seconds)
                    continue
                if current.state.name != state:
                    state = current.state.name
                    if on_state:
                        on_state(state)
                if state in FINAL_STATES:
                    break
                time.sleep(poll_seconds)
        except BaseException:
            _cancel(client, name)
            raise
    if state != SUCCEEDED:
        message = current.error.message or "no error message"
        raise CustomJobError(f"Vertex AI custom job {name} ({current.display_name}) ended "
                             f"{state.removeprefix('JOB_STATE_')}: {message}")
    return current


def _cancel(client, name: str) -> None:
    """Asks Vertex AI to cancel ``name``; a job that already ended is left as it is."""
    from google.api_core import exceptions as api_exceptions

    with contextlib.suppress(api_exceptions.FailedPrecondition, api_exceptions.NotFound):
        client.cancel_custom_job(name=name)


def pool_metadata(body: Mapping) -> list[dict]:
    """Machine spec and replica count of each worker pool, for artifact metadata."""
    return [{"machine_spec": dict(pool["machineSpec"]), "replica_count": pool["replicaCount"]}
            for pool in body["jobSpec"]["workerPoolSpecs"]]

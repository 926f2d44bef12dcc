"""Multi-host training: joins this process to the other workers of its job before JAX starts.

A training job on several hosts runs the same command on every host; each process must call
``jax.distributed.initialize`` before its first JAX computation, after which ``jax.devices()``
lists every host's chips and one jitted step spans them all. Where the cluster is described,
first match wins:

1. Explicit values: the ``calrec train`` flags, or the ``CALREC_COORDINATOR``,
   ``CALREC_NUM_PROCESSES`` and ``CALREC_PROCESS_ID`` variables (local multi-process runs,
   any cluster manager that can set three variables).
2. Vertex AI custom jobs of several worker-pool replicas (GPU or CPU hosts): the
   ``CLUSTER_SPEC`` JSON Vertex sets on every replica. Worker pool 0 (the chief, process 0)
   and worker pool 1 (the other workers) are the JAX processes; the chief's ``host:port`` is
   the coordinator.
3. A Cloud TPU slice of several hosts, described by ``TPU_WORKER_HOSTNAMES`` (or
   ``TPU_PROCESS_ADDRESSES``) and ``TPU_WORKER_ID`` (GKE's TPU variables), or
4. by the Cloud TPU metadata server (a TPU VM's ``agent-worker-number`` and
   ``worker-network-endpoints`` instance attributes). Both TPU shapes are handed to JAX's
   public ``jax.distributed.initialize()`` auto-detection (the ``gketpu`` / ``gcetpu``
   methods), which reads the same variables and attributes; this module only checks first
   that the description is whole, so what is missing fails in one line instead of as a
   connection traceback or a hang at the first collective. The metadata server is asked only
   on a Cloud TPU host (libtpu installed and chips found by JAX, or ``JAX_FORCE_TPU_INIT``),
   at ``$GCE_METADATA_IP`` (what JAX reads; default metadata.google.internal).

No Vertex AI page says which of these a multi-host TPU custom job sets (``CLUSTER_SPEC`` of
one replica, the TPU variables, the metadata attributes): all are read, in this order, and the
log line names the one used. Anything else is one process and nothing is initialized.
``initialize`` is idempotent, so both the CLI and the stage runner call it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import urllib.error
import urllib.request
from collections.abc import Mapping

from calrec_core.errors import CalrecError

logger = logging.getLogger(__name__)

COORDINATOR_ENV = "CALREC_COORDINATOR"
NUM_PROCESSES_ENV = "CALREC_NUM_PROCESSES"
PROCESS_ID_ENV = "CALREC_PROCESS_ID"
VERTEX_ENV = "CLUSTER_SPEC"
# Vertex worker pools that run the training command (2: reduction server, 3: evaluators).
_VERTEX_TRAINING_POOLS = ("workerpool0", "workerpool1")
# GKE-style TPU slice variables, as JAX's gketpu detection reads them (first one set wins).
TPU_HOSTNAMES_ENVS = ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES")
TPU_WORKER_ID_ENV = "TPU_WORKER_ID"
# The metadata server JAX's gcetpu detection asks, and the attributes it reads.
METADATA_HOST_ENV = "GCE_METADATA_IP"
METADATA_DEFAULT_HOST = "metadata.google.internal"
METADATA_WORKER_NUMBER = "agent-worker-number"
METADATA_WORKER_ENDPOINTS = "worker-network-endpoints"
# Seconds one metadata request may take (the server answers in milliseconds on a TPU VM).
METADATA_TIMEOUT = 10.0
# JAX's own switches: treat this host as a Cloud TPU VM / it found no TPU chips here.
FORCE_TPU_ENV = "JAX_FORCE_TPU_INIT"
NO_TPU_ENV = "TPU_SKIP_MDS_QUERY"
# The cluster this process joined (what a repeated ``initialize`` returns).
_joined = None


class ClusterError(CalrecError, ValueError):
    """The environment describes a cluster that cannot be joined (one line says why)."""


def _fail(message: str) -> ClusterError:
    return ClusterError(" ".join(message.split()))


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of one multi-host job, as ``jax.distributed.initialize`` takes them."""

    # "host:port" where process 0 serves the coordination service (None: JAX detects it).
    coordinator: str | None
    # Processes in the job, one per host (None: JAX detects it).
    num_processes: int | None
    # This process's index in [0, num_processes) (None: JAX detects it).
    process_id: int | None
    # Where the description came from: "explicit", "vertex", "tpu-variables" or
    # "tpu-metadata" (for the log line).
    source: str
    # JAX's cluster_detection_method for the TPU shapes ("gketpu", "gcetpu"); None otherwise.
    jax_method: str | None = None


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise _fail(f"{name} must be an integer, got {value!r}") from None


def _explicit(coordinator, num_processes, process_id, environ: Mapping[str, str]):
    coordinator = coordinator or environ.get(COORDINATOR_ENV) or None
    num_processes = num_processes if num_processes is not None else environ.get(NUM_PROCESSES_ENV)
    process_id = process_id if process_id is not None else environ.get(PROCESS_ID_ENV)
    given = [value is not None and value != "" for value in (coordinator, num_processes,
                                                             process_id)]
    if not any(given):
        return None
    count = _int(num_processes, "the number of processes") if given[1] else None
    if count == 1:
        return Cluster(None, 1, 0, "explicit")
    if not all(given):
        raise _fail(
            f"a multi-process run needs the coordinator address, the number of processes and "
            f"this process's id (flags or {COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, "
            f"{PROCESS_ID_ENV}); got coordinator={coordinator!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}")
    index = _int(process_id, "the process id")
    if count < 1 or not 0 <= index < count:
        raise _fail(f"process id {index} is not in [0, {count})")
    if ":" not in coordinator:
        raise _fail(f"the coordinator must be host:port, got {coordinator!r}")
    return Cluster(coordinator, count, index, "explicit")


def _vertex(text: str) -> Cluster | None:
    """The cluster of a Vertex AI ``CLUSTER_SPEC``; None for a one-replica job."""
    try:
        spec = json.loads(text)
        pools = spec.get("cluster", {})
        task = spec["task"]
        pool, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise _fail(f"cannot read {VERTEX_ENV} ({error!r}): {text[:200]}") from None
    workers = [address for name in _VERTEX_TRAINING_POOLS for address in pools.get(name, [])]
    if len(workers) < 2:
        return None
    if pool not in _VERTEX_TRAINING_POOLS:
        raise _fail(f"{VERTEX_ENV}: this replica is in {pool!r}; only "
                    f"{' and '.join(_VERTEX_TRAINING_POOLS)} run training")
    offset = 0 if pool == "workerpool0" else len(pools.get("workerpool0", []))
    return Cluster(workers[0], len(workers), offset + index, "vertex")


def _tpu_variables(environ: Mapping[str, str]) -> Cluster | None:
    """A slice described by GKE's TPU variables; None when they name one host or none."""
    name = next((name for name in TPU_HOSTNAMES_ENVS if environ.get(name)), None)
    if name is None:
        return None
    hosts = [host.strip() for host in environ[name].split(",")]
    if len(hosts) < 2:
        return None
    if not all(hosts):
        raise _fail(f"{name} has an empty host name: {environ[name]!r}")
    if not environ.get(TPU_WORKER_ID_ENV):
        raise _fail(f"{name} lists {len(hosts)} TPU hosts but {TPU_WORKER_ID_ENV} (this "
                    f"host's index among them) is not set")
    index = _int(environ[TPU_WORKER_ID_ENV], TPU_WORKER_ID_ENV)
    if not 0 <= index < len(hosts):
        raise _fail(f"{TPU_WORKER_ID_ENV}={index} is not in [0, {len(hosts)}) ({name} lists "
                    f"{len(hosts)} hosts)")
    return Cluster(None, None, None, "tpu-variables", "gketpu")


def on_cloud_tpu_host(environ: Mapping[str, str]) -> bool:
    """Whether JAX treats this host as a Cloud TPU VM (only then is the metadata asked).

    JAX's own rule: libtpu installed and TPU chips on the PCI bus (``import jax`` sets
    ``TPU_SKIP_MDS_QUERY`` when it finds none), or ``JAX_FORCE_TPU_INIT`` set.
    """
    if environ.get(FORCE_TPU_ENV) is not None:
        return True
    if importlib.util.find_spec("libtpu") is None:
        return False
    import jax  # noqa: F401  (its import looks for the chips and sets TPU_SKIP_MDS_QUERY)

    return os.environ.get(NO_TPU_ENV) is None and environ.get(NO_TPU_ENV) is None


def metadata_url(key: str, environ: Mapping[str, str]) -> str:
    """The instance attribute ``key``'s URL on the metadata server JAX asks."""
    host = environ.get(METADATA_HOST_ENV) or METADATA_DEFAULT_HOST
    return f"http://{host}/computeMetadata/v1/instance/attributes/{key}"


def _metadata(key: str, environ: Mapping[str, str]) -> str | None:
    """An instance attribute of this TPU VM (None: the server has no such attribute)."""
    url = metadata_url(key, environ)
    request = urllib.request.Request(url, headers={"Metadata-Flavor": "Google"})
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never proxied
    try:
        with opener.open(request, timeout=METADATA_TIMEOUT) as response:
            return response.read().decode("utf-8").strip()
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise _fail(f"Cloud TPU host discovery: the metadata server answered HTTP "
                    f"{error.code} for {url}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise _fail(f"Cloud TPU host discovery: no answer from the metadata server at {url} "
                    f"({reason}); on a TPU VM it is {METADATA_DEFAULT_HOST} (set "
                    f"{METADATA_HOST_ENV} if it lives elsewhere), or describe the cluster "
                    f"with --coordinator, --num-processes and --process-id") from None


def _tpu_metadata(environ: Mapping[str, str]) -> Cluster | None:
    """A slice described by the TPU VM's metadata; None when it is one host or no TPU VM."""
    if environ.get(NO_TPU_ENV) is not None or not on_cloud_tpu_host(environ):
        return None
    number = _metadata(METADATA_WORKER_NUMBER, environ)
    if number is None:  # JAX's gcetpu rule: no agent-worker-number, no TPU slice
        return None
    endpoints = _metadata(METADATA_WORKER_ENDPOINTS, environ)
    if not endpoints:
        raise _fail(f"Cloud TPU host discovery: the metadata server has "
                    f"{METADATA_WORKER_NUMBER}={number!r} but no {METADATA_WORKER_ENDPOINTS} "
                    f"({metadata_url(METADATA_WORKER_ENDPOINTS, environ)})")
    hosts = endpoints.split(",")
    index = _int(number, f"the metadata's {METADATA_WORKER_NUMBER}")
    if not 0 <= index < len(hosts):
        raise _fail(f"Cloud TPU host discovery: {METADATA_WORKER_NUMBER}={index} is not in "
                    f"[0, {len(hosts)}) ({METADATA_WORKER_ENDPOINTS} lists {len(hosts)})")
    if len(hosts) < 2:
        return None
    return Cluster(None, None, None, "tpu-metadata", "gcetpu")


def detect(coordinator: str | None = None, num_processes: int | None = None,
           process_id: int | None = None,
           environ: Mapping[str, str] | None = None) -> Cluster | None:
    """The job's cluster when this process is one of several, else None (see the module doc)."""
    environ = os.environ if environ is None else environ
    explicit = _explicit(coordinator, num_processes, process_id, environ)
    if explicit is not None:
        return explicit if explicit.num_processes != 1 else None
    if environ.get(VERTEX_ENV):
        cluster = _vertex(environ[VERTEX_ENV])
        if cluster is not None:
            return cluster
    return _tpu_variables(environ) or _tpu_metadata(environ)


def _join(cluster: Cluster) -> None:
    """``jax.distributed.initialize`` on ``cluster``; JAX's auto-detection fills in a TPU
    slice, and any failure of it becomes one line naming what it was reading."""
    import jax

    if cluster.jax_method is None:
        jax.distributed.initialize(coordinator_address=cluster.coordinator,
                                   num_processes=cluster.num_processes,
                                   process_id=cluster.process_id)
        return
    described = ("TPU_WORKER_HOSTNAMES/TPU_WORKER_ID" if cluster.jax_method == "gketpu"
                 else f"the metadata server ({metadata_url(METADATA_WORKER_NUMBER, os.environ)})")
    try:
        jax.distributed.initialize(cluster_detection_method=cluster.jax_method)
    except ValueError as error:
        # JAX logs "not functional in this environment" and leaves the values unset.
        raise _fail(f"{described} describe(s) a Cloud TPU slice, but JAX's "
                    f"{cluster.jax_method!r} detection found none here (libtpu missing or no "
                    f"TPU chips?): {error}") from None
    except Exception as error:  # noqa: BLE001 (JAX's look-ups raise requests' errors)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise _fail(f"Cloud TPU host discovery from {described} failed in JAX's "
                    f"{cluster.jax_method!r} detection: {type(error).__name__}: {first}; the "
                    f"slice's MEGASCALE_* values also come from the metadata server's tpu-env "
                    f"({metadata_url('tpu-env', os.environ)}) unless set") from None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> Cluster | None:
    """Calls ``jax.distributed.initialize`` once when this process is one of several.

    Returns the cluster joined (None for one process). Call it before any JAX computation;
    a second call is a no-op. Fails in one line (``ClusterError``) when the environment
    describes several processes incompletely, and when it describes several but JAX has
    already started alone (the job would hang at the first collective otherwise).
    """
    global _joined
    import jax
    from jax._src import xla_bridge

    if jax.distributed.is_initialized():
        return _joined
    cluster = detect(coordinator, num_processes, process_id, environ)
    if cluster is None:
        return None
    if xla_bridge.backends_are_initialized():
        raise RuntimeError("this process is one of several (from the "
                           f"{cluster.source} cluster description) but JAX already started "
                           "alone: initialize the cluster before the first JAX computation")
    _join(cluster)
    _joined = cluster
    logger.info("process %d of %d (%s cluster), %d of %d devices local", jax.process_index(),
                jax.process_count(), cluster.source, jax.local_device_count(),
                jax.device_count())
    return cluster


def place(tree, shardings):
    """A copy of ``tree`` (arrays every process holds whole) placed on ``shardings``.

    ``jax.device_put`` cannot move an array committed to one local device (a model loaded
    from an export) onto a sharding that spans hosts; each process instead fills its own
    shards from its copy of the value.
    """
    import jax
    import numpy as np

    def one(leaf, sharding):
        if sharding.is_fully_addressable:
            return jax.device_put(leaf, sharding, may_alias=False)
        return jax.make_array_from_callback(
            np.shape(leaf), sharding, lambda index: np.asarray(leaf[index]))

    return jax.tree.map(one, tree, shardings)

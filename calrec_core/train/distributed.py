"""Multi-host training: joins this process to the other workers of its job before JAX starts.

A training job on several hosts runs the same command on every host; each process must call
``jax.distributed.initialize`` before its first JAX computation, after which ``jax.devices()``
lists every host's chips and one jitted step spans them all. Where the cluster is described,
first match wins:

1. Explicit values: the ``calrec train`` flags, or the ``CALREC_COORDINATOR``,
   ``CALREC_NUM_PROCESSES`` and ``CALREC_PROCESS_ID`` variables (local multi-process runs,
   any cluster manager that can set three variables).
2. Vertex AI custom jobs: the ``CLUSTER_SPEC`` JSON Vertex sets on every replica. Worker pool 0
   (the chief, process 0) and worker pool 1 (the other workers) are the JAX processes; the
   chief's ``host:port`` is the coordinator.
3. A Cloud TPU slice of several hosts (TPU VM or GKE): JAX finds everything itself.

Anything else is one process and nothing is initialized. ``initialize`` is idempotent, so both
the CLI and the stage runner call it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping

logger = logging.getLogger(__name__)

COORDINATOR_ENV = "CALREC_COORDINATOR"
NUM_PROCESSES_ENV = "CALREC_NUM_PROCESSES"
PROCESS_ID_ENV = "CALREC_PROCESS_ID"
VERTEX_ENV = "CLUSTER_SPEC"
# Vertex worker pools that run the training command (2: reduction server, 3: evaluators).
_VERTEX_TRAINING_POOLS = ("workerpool0", "workerpool1")
# The cluster this process joined (what a repeated ``initialize`` returns).
_joined = None


@dataclasses.dataclass(frozen=True)
class Cluster:
    """The processes of one multi-host job, as ``jax.distributed.initialize`` takes them."""

    # "host:port" where process 0 serves the coordination service (None: JAX detects it).
    coordinator: str | None
    # Processes in the job, one per host (None: JAX detects it).
    num_processes: int | None
    # This process's index in [0, num_processes) (None: JAX detects it).
    process_id: int | None
    # Where the description came from: "explicit", "vertex" or "tpu" (for the log line).
    source: str


def _int(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be an integer, got {value!r}") from None


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
        raise ValueError(
            f"a multi-process run needs the coordinator address, the number of processes and "
            f"this process's id (flags or {COORDINATOR_ENV}, {NUM_PROCESSES_ENV}, "
            f"{PROCESS_ID_ENV}); got coordinator={coordinator!r}, "
            f"num_processes={num_processes!r}, process_id={process_id!r}")
    index = _int(process_id, "the process id")
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"process id {index} is not in [0, {count})")
    if ":" not in coordinator:
        raise ValueError(f"the coordinator must be host:port, got {coordinator!r}")
    return Cluster(coordinator, count, index, "explicit")


def _vertex(text: str) -> Cluster | None:
    """The cluster of a Vertex AI ``CLUSTER_SPEC``; None for a one-replica job."""
    try:
        spec = json.loads(text)
        pools = spec.get("cluster", {})
        task = spec["task"]
        pool, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"cannot read {VERTEX_ENV} ({error!r}): {text[:200]}") from None
    workers = [address for name in _VERTEX_TRAINING_POOLS for address in pools.get(name, [])]
    if len(workers) < 2:
        return None
    if pool not in _VERTEX_TRAINING_POOLS:
        raise ValueError(f"{VERTEX_ENV}: this replica is in {pool!r}; only "
                         f"{' and '.join(_VERTEX_TRAINING_POOLS)} run training")
    offset = 0 if pool == "workerpool0" else len(pools.get("workerpool0", []))
    return Cluster(workers[0], len(workers), offset + index, "vertex")


def _tpu_hosts() -> int:
    """Hosts of the Cloud TPU slice this process runs on; 1 off TPU VMs.

    Asks JAX's own TPU cluster detection (the TPU VM metadata server or GKE's TPU variables),
    which queries nothing off a TPU VM. It is not public API, so a JAX that moved it counts
    as one host here (the explicit variables still work there).
    """
    try:
        from jax._src.clusters import cloud_tpu_cluster as tpu

        for cluster in (tpu.GkeTpuCluster, tpu.GceTpuCluster):
            if cluster.is_env_present():
                return int(cluster.get_process_count())
    except (ImportError, AttributeError) as error:
        logger.debug("TPU slice detection unavailable: %s", error)
    return 1


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
    if _tpu_hosts() > 1:
        return Cluster(None, None, None, "tpu")
    return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None,
               environ: Mapping[str, str] | None = None) -> Cluster | None:
    """Calls ``jax.distributed.initialize`` once when this process is one of several.

    Returns the cluster joined (None for one process). Call it before any JAX computation;
    a second call is a no-op. Fails when the environment describes several processes but
    JAX has already started alone (the job would hang at the first collective otherwise).
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
    jax.distributed.initialize(coordinator_address=cluster.coordinator,
                               num_processes=cluster.num_processes,
                               process_id=cluster.process_id)
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

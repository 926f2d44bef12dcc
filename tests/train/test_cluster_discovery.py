"""Which cluster a training process joins, for each shape of environment a multi-host job may
present (Vertex AI's CLUSTER_SPEC, GKE's TPU variables, the Cloud TPU metadata server, none),
against a local stand-in of the metadata server on 127.0.0.1.

The joining shapes run two real processes each through JAX's public
``jax.distributed.initialize`` (CPU devices; the coordinator on 127.0.0.1). This machine has
no TPU chips: ``JAX_FORCE_TPU_INIT`` (JAX's own switch) makes JAX treat it as a Cloud TPU VM,
and the metadata shape also drops the ``TPU_SKIP_MDS_QUERY`` mark ``import jax`` leaves when
it finds no chips (the one thing about the hardware the test stands in for). Every failure is
one line that names what is missing.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from calrec_core.train.distributed import ClusterError, detect

pytestmark = pytest.mark.xdist_group("train_distributed")

# Seconds one joining process may take (import JAX, join, list devices).
TIMEOUT = 120
# What each process reports once it has joined (or found itself alone).
PROBE = """
import json, os, sys
import jax  # on a chipless host this marks TPU_SKIP_MDS_QUERY
if os.environ.get("PROBE_TPU_CHIPS"):
    os.environ.pop("TPU_SKIP_MDS_QUERY", None)  # stand in for the chips a TPU VM has
from calrec_core.train.distributed import initialize
try:
    cluster = initialize()
except ValueError as error:
    print(str(error), file=sys.stderr)
    sys.exit(3)
print(json.dumps({"source": cluster.source if cluster else None,
                  "index": jax.process_index(), "count": jax.process_count()}))
"""
# Variables of the outer environment that would change what the probe finds.
_CLUSTER_VARIABLES = ("CLUSTER_SPEC", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES",
                      "TPU_WORKER_ID", "GCE_METADATA_IP", "GCE_METADATA_HOST",
                      "JAX_FORCE_TPU_INIT", "TPU_SKIP_MDS_QUERY", "JAX_COORDINATOR_ADDRESS",
                      "JAX_COORDINATOR_PORT")


class MetadataStandIn(http.server.ThreadingHTTPServer):
    """The instance attributes of one TPU VM, served as the metadata server serves them."""

    def __init__(self, attributes: dict[str, str]):
        self.attributes = attributes
        self.asked: list[str] = []
        super().__init__(("127.0.0.1", 0), _MetadataHandler)

    @property
    def address(self) -> str:  # what GCE_METADATA_IP takes
        return f"127.0.0.1:{self.server_address[1]}"


class _MetadataHandler(http.server.BaseHTTPRequestHandler):
    PREFIX = "/computeMetadata/v1/instance/attributes/"

    def do_GET(self):  # noqa: N802 (http.server's name)
        key = self.path.removeprefix(self.PREFIX)
        self.server.asked.append(key)
        if self.headers.get("Metadata-Flavor") != "Google":
            self._answer(403, "Missing Metadata-Flavor:Google header.")
        elif self.path.startswith(self.PREFIX) and key in self.server.attributes:
            self._answer(200, self.server.attributes[key])
        else:
            self._answer(404, "not found")

    def _answer(self, code: int, text: str):
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


@contextlib.contextmanager
def metadata_servers(*attribute_sets: dict[str, str]):
    servers = [MetadataStandIn(attributes) for attributes in attribute_sets]
    threads = [threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                                daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield servers
    finally:
        for server, thread in zip(servers, threads, strict=True):
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _closed_address() -> str:
    """127.0.0.1:PORT with nothing listening (a metadata server that is not there)."""
    return f"127.0.0.1:{_free_port()}"


def _env(**extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith(("CALREC_", "MEGASCALE_")) and name not in _CLUSTER_VARIABLES}
    return dict(env, JAX_PLATFORMS="cpu", NO_PROXY="127.0.0.1,localhost",
                no_proxy="127.0.0.1,localhost", **extra)


def _run(envs: list[dict[str, str]]) -> list[tuple[int, str, str]]:
    """The probe in one process per environment, all at once (they join each other)."""
    processes = [subprocess.Popen([sys.executable, "-c", PROBE], env=env, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for env in envs]
    results = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=TIMEOUT)
            results.append((process.returncode, stdout, stderr))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return results


def _joined(results) -> list[dict]:
    for index, (code, _, stderr) in enumerate(results):
        assert code == 0, f"process {index}:\n{stderr[-3000:]}"
    return [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]


def test_vertex_cluster_spec_joins_two_processes():
    coordinator = f"127.0.0.1:{_free_port()}"
    cluster = {"workerpool0": [coordinator], "workerpool1": ["127.0.0.1:2222"]}
    specs = [{"cluster": cluster, "task": {"type": pool, "index": 0}, "environment": "cloud"}
             for pool in ("workerpool0", "workerpool1")]
    reports = _joined(_run([_env(CLUSTER_SPEC=json.dumps(spec)) for spec in specs]))
    assert reports == [{"source": "vertex", "index": index, "count": 2} for index in (0, 1)]


def test_tpu_metadata_joins_two_processes_through_jax():
    endpoints = "127.0.0.1,127.0.0.1"
    # tpu-env as a single-slice TPU VM has it (no MEGASCALE_* keys).
    tpu_env = "ACCELERATOR_TYPE: 'v5litepod-8'\nWORKER_ID: '{}'\n"
    with metadata_servers(*({"agent-worker-number": str(worker),
                             "worker-network-endpoints": endpoints,
                             "tpu-env": tpu_env.format(worker)} for worker in (0, 1))) as servers:
        port = str(_free_port())
        results = _run([_env(JAX_FORCE_TPU_INIT="1", PROBE_TPU_CHIPS="1",
                             GCE_METADATA_IP=server.address, JAX_COORDINATOR_PORT=port)
                        for server in servers])
        reports = _joined(results)
        # Each host's own worker number made it that process; JAX read the same attributes.
        assert reports == [{"source": "tpu-metadata", "index": index, "count": 2}
                           for index in (0, 1)]
        for server in servers:
            assert {"agent-worker-number", "worker-network-endpoints"} <= set(server.asked)


def test_tpu_worker_variables_join_two_processes_through_jax():
    with metadata_servers({"tpu-env": "ACCELERATOR_TYPE: 'v5litepod-8'\n"}) as (server,):
        port = str(_free_port())
        results = _run([_env(JAX_FORCE_TPU_INIT="1", TPU_WORKER_HOSTNAMES="127.0.0.1,127.0.0.1",
                             TPU_WORKER_ID=str(worker), GCE_METADATA_IP=server.address,
                             JAX_COORDINATOR_PORT=port) for worker in (0, 1)])
        reports = _joined(results)
    assert reports == [{"source": "tpu-variables", "index": index, "count": 2}
                       for index in (0, 1)]


def test_tpu_worker_variables_without_a_metadata_server_fail_in_one_line():
    # JAX reads the slice's MEGASCALE_* values from the metadata server when they are unset.
    (code, _, stderr), = _run([_env(JAX_FORCE_TPU_INIT="1",
                                    TPU_WORKER_HOSTNAMES="127.0.0.1,127.0.0.1",
                                    TPU_WORKER_ID="0", GCE_METADATA_IP=_closed_address(),
                                    JAX_COORDINATOR_PORT=str(_free_port()))])
    assert code == 3, stderr
    message = stderr.strip().splitlines()[-1]
    assert "TPU_WORKER_HOSTNAMES/TPU_WORKER_ID" in message and "tpu-env" in message
    assert "Traceback" not in stderr


def test_no_cluster_anywhere_is_one_process():
    reports = _joined(_run([_env()]))
    assert reports == [{"source": None, "index": 0, "count": 1}]


def test_a_tpu_vm_of_one_host_is_one_process():
    with metadata_servers({"agent-worker-number": "0",
                           "worker-network-endpoints": "10.0.0.2"},
                          {"tpu-env": "ACCELERATOR_TYPE: 'v5litepod-8'\n"}) as (one, plain):
        assert detect(environ={"JAX_FORCE_TPU_INIT": "1", "GCE_METADATA_IP": one.address}) \
            is None
        # A host whose metadata has no TPU worker number is no slice (JAX's gcetpu rule).
        assert detect(environ={"JAX_FORCE_TPU_INIT": "1", "GCE_METADATA_IP": plain.address}) \
            is None
        assert plain.asked == ["agent-worker-number"]


def test_off_a_tpu_host_the_metadata_server_is_never_asked():
    with metadata_servers({"agent-worker-number": "0",
                           "worker-network-endpoints": "a,b"}) as (server,):
        assert detect(environ={"GCE_METADATA_IP": server.address}) is None
        # JAX's mark for "no TPU chips here" wins over its force switch, as in JAX.
        assert detect(environ={"GCE_METADATA_IP": server.address, "JAX_FORCE_TPU_INIT": "1",
                               "TPU_SKIP_MDS_QUERY": "1"}) is None
        assert server.asked == []


def test_tpu_metadata_shape_is_read_before_jax_is_asked():
    with metadata_servers({"agent-worker-number": "1",
                           "worker-network-endpoints": "10.0.0.2,10.0.0.3"}) as (server,):
        cluster = detect(environ={"JAX_FORCE_TPU_INIT": "1", "GCE_METADATA_IP": server.address})
    assert (cluster.source, cluster.jax_method) == ("tpu-metadata", "gcetpu")
    # JAX fills in coordinator, count and id itself.
    assert (cluster.coordinator, cluster.num_processes, cluster.process_id) == (None,) * 3


@pytest.mark.parametrize("environ, attributes, message", [
    ({"TPU_WORKER_HOSTNAMES": "h0,h1"}, None, "TPU_WORKER_ID (this host's index"),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1", "TPU_WORKER_ID": "2"}, None,
     "TPU_WORKER_ID=2 is not in [0, 2)"),
    ({"TPU_PROCESS_ADDRESSES": "h0,,h2", "TPU_WORKER_ID": "0"}, None, "empty host name"),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1", "TPU_WORKER_ID": "one"}, None,
     "TPU_WORKER_ID must be an integer"),
    ({"JAX_FORCE_TPU_INIT": "1"}, "closed", "no answer from the metadata server at http://"),
    ({"JAX_FORCE_TPU_INIT": "1"}, {"agent-worker-number": "0"},
     "no worker-network-endpoints"),
    ({"JAX_FORCE_TPU_INIT": "1"}, {"agent-worker-number": "3", "worker-network-endpoints": "a,b"},
     "agent-worker-number=3 is not in [0, 2)"),
])
def test_incomplete_tpu_descriptions_fail_in_one_line(environ, attributes, message):
    with metadata_servers(*([attributes] if isinstance(attributes, dict) else [])) as servers:
        environ = dict(environ)
        if servers:
            environ["GCE_METADATA_IP"] = servers[0].address
        elif attributes == "closed":
            environ["GCE_METADATA_IP"] = _closed_address()
        with pytest.raises(ClusterError) as raised:
            detect(environ=environ)
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)

"""Training as a Vertex AI custom job: request bodies for TPU slices and GPU worker pools, the
launcher (create, follow, fail, cancel) through the real aiplatform_v1 client against the
validating loopback stand-in (tests/pipelines/conftest.py), and the custom-job pipeline."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml
from google.api_core import exceptions as api_exceptions
from google.cloud import aiplatform_v1
from google.oauth2.credentials import Credentials

from calrec_core.cli import build_parser
from calrec_core.data import load_roles_config
from calrec_core.experiment import preset
from components import ImageSet
from components.custom_job import (
    CustomJobError,
    WorkerPool,
    custom_job_body,
    run_custom_job,
    train_command,
)
from pipelines import BuildOptions, compile_pipeline, load_pipeline_spec
from pipelines.vertex import RunSettings, VertexTarget, submit_pipeline

REGION = "europe-west4"
REPO = pathlib.Path(__file__).resolve().parents[2]
PARENT = f"projects/test-project/locations/{REGION}"
IMAGES = ImageSet.tagged("us-docker.pkg.dev/test-project/calrec", "0123abcd")
SERVICE_ACCOUNT = "calrec-trainer@test-project.iam.gserviceaccount.com"
NETWORK = "projects/123456789012/global/networks/calrec-vpc"
COMMAND = train_command(1, "gs://calrec-data/ingested", "gs://calrec-runs/ckpt/run-1/stage1",
                        "gs://calrec-runs/ckpt/run-1/stage1.train-config.json",
                        compilation_cache="gs://calrec-runs/ckpt/jax-cache")


def _body(**machines) -> dict:
    return custom_job_body("calrec-train-stage1", IMAGES.tpu, COMMAND, **machines)


def _launch(endpoint: str, body: dict, **options):
    return run_custom_job(body, project="test-project", location=REGION, api_endpoint=endpoint,
                          api_transport="rest", credentials=Credentials("stand-in-token"),
                          poll_seconds=0.01, **options)


def _created(standin) -> dict:
    (create,) = standin.find("POST", "/customJobs")
    assert create.path == f"/v1/{PARENT}/customJobs"
    return create.body


def test_a_v5e_slice_of_four_hosts_is_one_pool_with_a_topology_and_runs_to_success(
        vertex_standin, tmp_path):
    standin, endpoint = vertex_standin
    body = _body(machine_type="ct5lp-hightpu-4t", tpu_topology="4x4",
                 service_account=SERVICE_ACCOUNT, network=NETWORK, timeout_seconds=7200,
                 base_output_directory="gs://calrec-runs/ckpt/run-1/stage1",
                 labels={"calrec-stage": "1"}, restart_job_on_worker_restart=True)
    assert WorkerPool("ct5lp-hightpu-4t", tpu_topology="4x4").hosts == 4
    states = []
    resources = tmp_path / "out" / "gcp_resources"
    job = _launch(endpoint, body, on_state=states.append, gcp_resources=str(resources))
    # QUEUED on creation, then one state per poll.
    assert states == ["JOB_STATE_QUEUED", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
    assert job.state.name == "JOB_STATE_SUCCEEDED"
    sent = _created(standin)
    (pool,) = sent["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "ct5lp-hightpu-4t", "tpuTopology": "4x4"}
    assert int(pool["replicaCount"]) == 1
    assert pool["containerSpec"] == {"imageUri": IMAGES.tpu, "command": COMMAND}
    assert COMMAND[:4] == ["calrec", "train", "--stage", "1"]
    assert sent["jobSpec"]["scheduling"] == {"timeout": "7200s",
                                             "restartJobOnWorkerRestart": True}
    assert sent["jobSpec"]["serviceAccount"] == SERVICE_ACCOUNT
    assert sent["jobSpec"]["network"] == NETWORK
    assert sent["jobSpec"]["baseOutputDirectory"] == {
        "outputUriPrefix": "gs://calrec-runs/ckpt/run-1/stage1"}
    assert sent["labels"] == {"calrec-stage": "1"}
    # The format google-cloud-pipeline-components writes: the console links and cancels it.
    assert json.loads(resources.read_text()) == {"resources": [{
        "resourceType": "CustomJob", "resourceUri": f"{endpoint}/v1/{job.name}"}]}
    assert job.name.startswith(f"{PARENT}/customJobs/")
    assert not standin.find("POST", ":cancel")


def test_a_v5p_slice_takes_a_three_dimensional_topology():
    body = _body(machine_type="ct5p-hightpu-4t", tpu_topology="2x2x4")
    (pool,) = body["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "ct5p-hightpu-4t", "tpuTopology": "2x2x4"}
    assert pool["replicaCount"] == 1
    assert WorkerPool("ct5p-hightpu-4t", tpu_topology="2x2x4").hosts == 4
    assert WorkerPool("ct5p-hightpu-4t").hosts == 1
    assert WorkerPool("ct6e-standard-4t", tpu_topology="8x8").hosts == 16
    with pytest.raises(ValueError, match="takes 3 dimensions"):
        _body(machine_type="ct5p-hightpu-4t", tpu_topology="4x4")


def test_four_gpu_hosts_are_a_primary_and_three_workers_with_the_same_specs(vertex_standin):
    standin, endpoint = vertex_standin
    body = _body(machine_type="a3-highgpu-8g", replica_count=4,
                 accelerator_type="NVIDIA_H100_80GB", accelerator_count=8)
    _launch(endpoint, body)
    first, second = _created(standin)["jobSpec"]["workerPoolSpecs"]
    assert int(first["replicaCount"]) == 1 and int(second["replicaCount"]) == 3
    assert first["machineSpec"] == second["machineSpec"]
    assert first["containerSpec"] == second["containerSpec"]
    assert first["machineSpec"]["machineType"] == "a3-highgpu-8g"
    assert int(first["machineSpec"]["acceleratorCount"]) == 8
    # The REST transport sends enums as numbers.
    accelerator = first["machineSpec"]["acceleratorType"]
    assert (aiplatform_v1.AcceleratorType[accelerator] if isinstance(accelerator, str) else
            aiplatform_v1.AcceleratorType(accelerator)).name == "NVIDIA_H100_80GB"
    assert WorkerPool("a3-highgpu-8g", 4, "NVIDIA_H100_80GB", 8).hosts == 4
    # One L4 host is a single pool.
    (pool,) = _body(machine_type="g2-standard-8", accelerator_type="NVIDIA_L4",
                    accelerator_count=1)["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "g2-standard-8",
                                   "acceleratorType": "NVIDIA_L4", "acceleratorCount": 1}


@pytest.mark.parametrize("machines, message", [
    (dict(machine_type="ct5lp-hightpu-4t", accelerator_type="TPU_V5_LITEPOD",
          accelerator_count=4), "carries its 4 TPU chip(s) in the machine type"),
    (dict(machine_type="ct5lp-hightpu-4t", replica_count=4), "ask for more hosts with "
                                                             "tpu_topology"),
    (dict(machine_type="ct5lp-hightpu-4t", tpu_topology="1x1"), "not a whole number"),
    (dict(machine_type="ct5lp-hightpu-4t", tpu_topology="4x4x4"), "takes 2 dimensions"),
    (dict(machine_type="g2-standard-8", accelerator_type="NVIDIA_L4", accelerator_count=1,
          tpu_topology="2x2"), "tpu_topology is for TPU machine types"),
    (dict(machine_type="g2-standard-8", accelerator_type="NVIDIA_L4", accelerator_count=2),
     "comes with 1 x NVIDIA_L4"),
    (dict(machine_type="g2-standard-8"), "comes with 1 x NVIDIA_L4"),
    (dict(machine_type="a2-highgpu-4g", accelerator_type="NVIDIA_L4", accelerator_count=4),
     "comes with 4 x NVIDIA_TESLA_A100"),
    (dict(machine_type="g2-standard-8", accelerator_type="TPU_V5_LITEPOD",
          accelerator_count=1), "use a TPU machine type"),
    (dict(machine_type="n2-standard-8", accelerator_type="NVIDIA_TESLA_T4",
          accelerator_count=1), "takes no accelerators"),
    (dict(machine_type="cloud-tpu", accelerator_type="TPU_V3", accelerator_count=4),
     "accelerator_count 8"),
    (dict(machine_type="n2-standard-8", replica_count=0), "replica_count must be >= 1"),
    (dict(machine_type="n1-standard-8", accelerator_type="NVIDIA_TESLA_T4"),
     "go together"),
    (dict(machine_type=""), "machine_type is required"),
])
def test_impossible_machines_are_refused_before_any_request(machines, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _body(**machines)


def test_other_invalid_settings_are_refused_together():
    with pytest.raises(ValueError) as error:
        custom_job_body("", "", [], machine_type="n2-standard-8", service_account="nobody",
                        network="default", base_output_directory="/tmp/out")
    for part in ("display_name", "image_uri", "worker command", "e-mail", "network",
                 "gs:// URI"):
        assert part in str(error.value)
    with pytest.raises(ValueError, match="invalid labels"):
        _body(machine_type="n2-standard-8", labels={"Stage": "1"})
    # CPU, v2/v3 TPUs, and N1 machines with GPUs are fine.
    assert _body(machine_type="n2-standard-8", replica_count=2)["jobSpec"]["workerPoolSpecs"]
    assert _body(machine_type="cloud-tpu", accelerator_type="TPU_V3", accelerator_count=8)
    assert _body(machine_type="n1-standard-8", accelerator_type="NVIDIA_TESLA_T4",
                 accelerator_count=2)


def test_the_stand_in_refuses_what_vertex_refuses(vertex_standin):
    standin, endpoint = vertex_standin
    body = _body(machine_type="n2-standard-8", replica_count=3)
    body["jobSpec"]["workerPoolSpecs"][0]["replicaCount"] = 2  # the primary is one replica
    with pytest.raises(api_exceptions.BadRequest, match="must have replica_count 1"):
        _launch(endpoint, body)
    body = _body(machine_type="ct5lp-hightpu-4t")
    body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["machineType"] = "n2-standard-8"
    body["jobSpec"]["workerPoolSpecs"][0]["machineSpec"]["tpuTopology"] = "2x2"
    with pytest.raises(api_exceptions.BadRequest, match="only supported for TPU"):
        _launch(endpoint, body)
    # A field the API does not have never leaves the launcher.
    with pytest.raises(ValueError, match="not a Vertex AI CustomJob"):
        _launch(endpoint, {**_body(machine_type="n2-standard-8"), "workers": 2})
    assert not standin.custom_jobs


def test_a_failed_job_raises_with_its_name_and_vertex_error(vertex_standin):
    standin, endpoint = vertex_standin
    standin.custom_job_states = ["JOB_STATE_RUNNING", "JOB_STATE_FAILED"]
    standin.custom_job_error = "The replica workerpool1-2 exited with a non-zero status of 137."
    with pytest.raises(CustomJobError) as error:
        _launch(endpoint, _body(machine_type="n2-standard-8", replica_count=4))
    (job,) = standin.custom_jobs.values()
    assert job["name"] in str(error.value)
    assert "calrec-train-stage1" in str(error.value) and "ended FAILED" in str(error.value)
    assert "workerpool1-2 exited with a non-zero status of 137" in str(error.value)


def test_an_interrupted_wait_cancels_the_job(vertex_standin):
    standin, endpoint = vertex_standin

    def interrupt(state):
        if state == "JOB_STATE_RUNNING":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _launch(endpoint, _body(machine_type="n2-standard-8"), on_state=interrupt)
    (job,) = standin.custom_jobs.values()
    (cancel,) = standin.find("POST", ":cancel")
    assert cancel.path == f"/v1/{job['name']}:cancel"
    assert job["state"] == "JOB_STATE_CANCELLING"


def test_sigterm_to_the_waiting_step_cancels_the_job(vertex_standin, tmp_path):
    """A cancelled pipeline run stops its steps with SIGTERM: the job must not outlive it."""
    standin, endpoint = vertex_standin
    standin.custom_job_states = ["JOB_STATE_RUNNING"] * 100000  # runs until cancelled
    body = tmp_path / "body.json"
    body.write_text(json.dumps(_body(machine_type="n2-standard-8")))
    script = textwrap.dedent(f"""
        import json, sys
        from google.oauth2.credentials import Credentials
        from components.custom_job import Terminated, run_custom_job
        try:
            run_custom_job(json.load(open({str(body)!r})), project="test-project",
                           location={REGION!r}, api_endpoint={endpoint!r}, api_transport="rest",
                           credentials=Credentials("stand-in-token"), poll_seconds=0.05)
        except Terminated:
            sys.exit(143)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=os.getcwd(),
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not any(job["state"] == "JOB_STATE_RUNNING"
                      for job in list(standin.custom_jobs.values())):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 143, process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    (job,) = standin.custom_jobs.values()
    assert [request.path for request in standin.find("POST", ":cancel")] == [
        f"/v1/{job['name']}:cancel"]


def test_train_reads_a_whole_config_and_refuses_a_preset_beside_it(tmp_path, capsys):
    """The workers' --train-config: the stage's TrainConfig, --set on top, no other preset."""
    from calrec_core.cli import main
    from calrec_core.train.cli import _config
    from calrec_core.train.config import TrainConfig

    config = tmp_path / "train.json"
    config.write_text(json.dumps(TrainConfig.tiny().to_dict()))
    args = build_parser().parse_args(["train", "--stage", "1", "--data", "d", "--output", "o",
                                      "--train-config", str(config), "--set", "alpha=0.5"])
    assert _config(args) == TrainConfig.tiny().replace(alpha=0.5)
    common = ["train", "--stage", "1", "--data", str(tmp_path), "--output", str(tmp_path / "o")]
    assert main([*common, "--train-config", str(config), "--preset", "tiny"]) == 2
    assert "does not go with --preset tiny" in capsys.readouterr().err
    assert main([*common, "--train-config", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: no such file" in capsys.readouterr().err
    config.write_text(json.dumps({"stage1_stepz": 3}))
    assert main([*common, "--train-config", str(config)]) == 2
    assert "unknown field 'stage1_stepz'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def experiment(sample_config):
    return dataclasses.replace(preset("tiny"), roles=load_roles_config(sample_config))


@pytest.fixture(scope="module")
def custom_job_template(tmp_path_factory, experiment):
    options = BuildOptions(experiment=experiment, images=IMAGES, accelerator="tpu",
                           training="custom_job")
    return compile_pipeline(options, tmp_path_factory.mktemp("spec") / "calrec.yaml")


def _tasks(spec: dict) -> dict[str, dict]:
    dags = [spec["root"]["dag"]] + [component["dag"] for component in spec["components"].values()
                                    if "dag" in component]
    return {task["taskInfo"]["name"]: task for dag in dags for task in dag["tasks"].values()}


def _executor(spec: dict, task: dict) -> dict:
    component = spec["components"][task["componentRef"]["name"]]
    return spec["deploymentSpec"]["executors"][component["executorLabel"]]["container"]


def test_custom_job_training_launches_from_the_cpu_image_with_run_time_machines(
        custom_job_template):
    spec = load_pipeline_spec(custom_job_template)
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    defaults = {name: parameters[name].get("defaultValue") for name in parameters
                if name.startswith("training_")}
    assert defaults == {"training_machine_type": "ct5lp-hightpu-4t",
                        "training_replica_count": 1.0, "training_accelerator_type": "",
                        "training_accelerator_count": 0.0, "training_tpu_topology": "",
                        "training_service_account": "", "training_network": ""}
    tasks = _tasks(spec)
    for name in ("train-stage1", "train-stage2"):
        container = _executor(spec, tasks[name])
        assert container["image"] == IMAGES.cpu
        assert "accelerator" not in container["resources"]
        assert container["resources"]["resourceCpuLimit"] == "2"
        assert "--function_to_execute" in container["args"] and "train_custom_job" in \
            container["args"]
        inputs = tasks[name]["inputs"]["parameters"]
        machines = inputs["custom_job"]["runtimeValue"]["constant"]
        # The workers run the accelerator's image on the parameters' machines.
        assert machines["worker_image"] == IMAGES.tpu
        for key in ("machine_type", "replica_count", "accelerator_type", "accelerator_count",
                    "tpu_topology", "service_account", "network"):
            assert machines[key].startswith("{{$.inputs.parameters['pipelinechannel--"
                                            f"training_{key}']}}}}")
        assert inputs["project"]["runtimeValue"]["constant"] == (
            "{{$.pipeline_google_cloud_project_id}}")
        assert inputs["location"]["runtimeValue"]["constant"] == (
            "{{$.pipeline_google_cloud_location}}")
        assert tasks[name]["retryPolicy"]["maxRetryCount"] == 2
    launcher = spec["components"][tasks["train-stage1"]["componentRef"]["name"]]
    assert launcher["outputDefinitions"]["parameters"]["gcp_resources"][
        "parameterType"] == "STRING"
    # Evaluation runs in its container step, on the CUDA image with the parameter's GPU
    # (pipeline steps get no TPUs).
    evaluate = _executor(spec, tasks["evaluate"])
    assert evaluate["image"] == IMAGES.cuda
    assert evaluate["resources"]["accelerator"]["resourceType"] == (
        "{{$.inputs.parameters['pipelinechannel--accelerator_type']}}")
    assert parameters["accelerator_type"]["defaultValue"] == "NVIDIA_L4"


def test_the_container_build_has_no_custom_job_parameters(tmp_path, experiment):
    options = BuildOptions(experiment=experiment, images=IMAGES, accelerator="gpu")
    spec = load_pipeline_spec(compile_pipeline(options, tmp_path / "calrec.yaml"))
    assert not [name for name in spec["root"]["inputDefinitions"]["parameters"]
                if name.startswith("training_")]
    assert _executor(spec, _tasks(spec)["train-stage1"])["image"] == IMAGES.cuda
    with pytest.raises(ValueError, match="pipeline steps get no TPUs"):
        BuildOptions(experiment=experiment, images=IMAGES, accelerator="tpu").build()
    with pytest.raises(ValueError, match="unknown training 'gke'"):
        BuildOptions(experiment=experiment, images=IMAGES, training="gke").build()


def test_submitting_the_custom_job_pipeline_is_accepted(vertex_standin, custom_job_template,
                                                        monkeypatch):
    standin, endpoint = vertex_standin
    monkeypatch.setattr("google.auth.default", lambda scopes=None, **_: (
        Credentials("stand-in-token"), "test-project"))
    target = VertexTarget(project="test-project", region=REGION, api_endpoint=endpoint,
                          api_transport="rest", credentials=Credentials("stand-in-token"))
    settings = RunSettings(pipeline_root="gs://calrec-artifacts/runs",
                           service_account=SERVICE_ACCOUNT)
    values = {"raw_data_uri": "gs://calrec-data/amazon2018",
              "training_tpu_topology": "4x4", "training_service_account": SERVICE_ACCOUNT}
    name = submit_pipeline(target, settings, custom_job_template, parameter_values=values)
    (create,) = standin.find("POST", "/pipelineJobs")
    assert name.endswith(create.query["pipelineJobId"][0])
    sent = create.body["runtimeConfig"]["parameterValues"]
    assert sent["training_tpu_topology"] == "4x4"
    with pytest.raises(ValueError, match="training_hosts is not found"):
        submit_pipeline(target, settings, custom_job_template,
                        parameter_values={**values, "training_hosts": 4})
    # A TPU for the evaluation step is refused before any request.
    before = len(standin.find("POST", "/pipelineJobs"))
    with pytest.raises(ValueError, match="asks a pipeline step for a TPU"):
        submit_pipeline(target, settings, custom_job_template,
                        parameter_values={**values, "accelerator_type": "TPU_V5_LITEPOD"})
    assert len(standin.find("POST", "/pipelineJobs")) == before


def test_compile_cli_takes_the_training_choice(tmp_path, monkeypatch):
    output = tmp_path / "spec.yaml"
    parser = build_parser()
    args = parser.parse_args(["pipeline", "compile", "--preset", "tiny", "--output", str(output),
                              "--accelerator", "gpu", "--training", "custom_job",
                              "--registry", "us-docker.pkg.dev/test-project/calrec",
                              "--tag", "0123abcd"])
    assert args.handler(args) == 0
    spec = yaml.safe_load(output.read_text())
    parameters = spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["training_machine_type"]["defaultValue"] == "g2-standard-8"
    assert parameters["training_accelerator_type"]["defaultValue"] == "NVIDIA_L4"
    assert parameters["training_accelerator_count"]["defaultValue"] == 1
    with pytest.raises(SystemExit):
        parser.parse_args(["pipeline", "compile", "--preset", "tiny", "--output", str(output),
                           "--training", "gke"])


# --- The stand-in plays the job: every replica is a local ``calrec train`` process. ---------

# Seconds the two-host job, or the one-process reference run, may take.
E2E_TIMEOUT = 600
# 1-process and 2-process runs reduce in different orders; their float32 losses agree to this.
RTOL = 1e-4


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _worker_env(devices: int, **extra: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("CALREC_") and name != "CLUSTER_SPEC"}
    return dict(env, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", **extra)


def _local_command(command: list[str]) -> list[str]:
    """The image's ``calrec`` console script, as this environment runs it."""
    assert command[0] == "calrec", command
    return [sys.executable, "-m", "calrec_core.cli", *command[1:]]


class LocalReplicas:
    """Plays a created custom job as Vertex AI would run it: one process per replica of worker
    pools 0 and 1, each with the CLUSTER_SPEC Vertex sets (every replica's address, its own
    pool and index); SUCCEEDED when all exit 0, else FAILED with the failing replica's log."""

    def __init__(self, job: dict, log_dir) -> None:
        pools = job["jobSpec"]["workerPoolSpecs"]
        cluster = {f"workerpool{index}": [f"127.0.0.1:{_free_port()}"
                                          for _ in range(int(pool["replicaCount"]))]
                   for index, pool in enumerate(pools)}
        self.processes, self.logs = [], []
        for index, pool in enumerate(pools):
            container = pool["containerSpec"]
            for replica in range(int(pool["replicaCount"])):
                spec = {"cluster": cluster, "environment": "cloud",
                        "task": {"type": f"workerpool{index}", "index": replica},
                        "job": json.dumps(job["jobSpec"])}
                log = log_dir / f"workerpool{index}-{replica}.log"
                self.logs.append(log)
                with open(log, "w") as stream:
                    self.processes.append(subprocess.Popen(
                        _local_command(container["command"]) + container.get("args", []),
                        env=_worker_env(4, CLUSTER_SPEC=json.dumps(spec)),
                        stdout=stream, stderr=subprocess.STDOUT))

    def poll(self) -> tuple[str, str | None]:
        codes = [process.poll() for process in self.processes]
        failed = [index for index, code in enumerate(codes) if code not in (None, 0)]
        if failed:
            self.cancel()
            log = self.logs[failed[0]]
            return "JOB_STATE_FAILED", (f"The replica {log.stem} exited with a non-zero "
                                        f"status of {codes[failed[0]]}: "
                                        + log.read_text()[-3000:])
        if None in codes:
            return "JOB_STATE_RUNNING", None
        return "JOB_STATE_SUCCEEDED", None

    def cancel(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, sample_dir, sample_config):
    from calrec_core.data import run_ingest

    output = tmp_path_factory.mktemp("ingested") / "data"
    run_ingest(str(sample_dir), str(sample_config), str(output))
    return output


def _metrics(run_dir: str, kind: str) -> list[dict]:
    from calrec_core import storage

    lines = storage.path(storage.join(run_dir, "metrics.jsonl")).read_text().splitlines()
    return [record for record in map(json.loads, filter(None, lines))
            if record["kind"] == kind]


def _parameters(export):
    import jax
    import numpy as np
    from flax import nnx

    from calrec_core.model.export import load_trained

    """Every trained parameter of an export, as one flat array."""
    leaves = jax.tree.leaves(nnx.to_pure_dict(nnx.state(load_trained(export)[0], nnx.Param)))
    return np.concatenate([np.asarray(leaf).ravel() for leaf in leaves])


@pytest.mark.xdist_group("train_distributed")
@pytest.mark.parametrize("work_on", ["cloud_storage", "shared_folder"])
def test_a_two_host_stage1_job_matches_one_local_process(
        vertex_standin, cloud_storage, ingested, tmp_path, monkeypatch, work_on):
    """Data and the training config on gs://; the work folder (checkpoints, metrics, export,
    result.json) on gs:// as on Vertex AI, or in a local folder both hosts share."""
    import gcsfs
    import numpy as np

    from calrec_core import storage
    from calrec_core.train.config import TrainConfig

    standin, endpoint = vertex_standin
    # The stand-in answers Vertex AI; Cloud Storage is the local server (for every process).
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", cloud_storage.url)
    gcsfs.GCSFileSystem.clear_instance_cache()
    logs = tmp_path / "replicas"
    logs.mkdir()
    standin.custom_job_player = lambda job: LocalReplicas(job, logs)
    data = cloud_storage.folder("ingested")
    storage.copy_tree(ingested, data)
    checkpoints = cloud_storage.folder("checkpoints")
    work = (f"{checkpoints}/run-1/train-stage1" if work_on == "cloud_storage"
            else str(tmp_path / "shared" / "train-stage1"))
    config = f"{checkpoints}/run-1/train-stage1.train-config.json"
    storage.write_atomic(config, json.dumps(TrainConfig.tiny().to_dict()))
    body = custom_job_body("calrec-train-stage1", IMAGES.cpu,
                           train_command(1, data, work, config),
                           machine_type="n2-standard-8", replica_count=2,
                           restart_job_on_worker_restart=True)
    states = []
    started = time.monotonic()
    try:
        job = _launch(endpoint, body, on_state=states.append)
    except CustomJobError as error:
        pytest.fail(str(error)[-4000:])
    assert time.monotonic() - started < E2E_TIMEOUT
    assert job.state.name == "JOB_STATE_SUCCEEDED" and states[-1] == "JOB_STATE_SUCCEEDED"
    assert "process 1 of 2" in (logs / "workerpool1-0.log").read_text()
    two = json.loads(storage.path(storage.join(work, "result.json")).read_text())

    local = tmp_path / "one"
    reference = subprocess.run(
        [sys.executable, "-m", "calrec_core.cli", "train", "--stage", "1", "--data",
         str(ingested), "--output", str(local), "--preset", "tiny"],
        env=_worker_env(8), capture_output=True, text=True, timeout=E2E_TIMEOUT)
    assert reference.returncode == 0, reference.stderr[-4000:]
    one = json.loads((local / "result.json").read_text())

    two_train, one_train = _metrics(work, "train"), _metrics(str(local), "train")
    assert [r["step"] for r in two_train] == list(range(1, TrainConfig.tiny().stage1_steps + 1))
    for key in ("loss", "nig", "tt", "ut"):
        np.testing.assert_allclose([r[key] for r in two_train], [r[key] for r in one_train],
                                   rtol=RTOL, err_msg=key)
    assert two["selected_step"] == one["selected_step"]
    assert two["metric_name"] == one["metric_name"]
    # The export (only process 0 wrote it) holds the one-process model.
    exported = tmp_path / "exported"
    storage.copy_tree(two["checkpoint_dir"], exported)
    two_params, one_params = _parameters(exported), _parameters(one["checkpoint_dir"])
    np.testing.assert_allclose(two_params, one_params, rtol=0,
                               atol=TrainConfig.tiny().learning_rate)
    assert np.isclose(two_params, one_params, rtol=RTOL, atol=1e-5).mean() > 0.999


@pytest.mark.xdist_group("train_distributed")
def test_the_launcher_step_trains_through_the_job_and_fills_the_model_artifact(
        vertex_standin, cloud_storage, ingested, tmp_path, monkeypatch):
    """components.train.train_custom_job end to end: the TrainConfig and the job go out, the
    played job (one host) trains on the bucket, the export lands in the Model artifact."""
    import gcsfs
    from kfp import dsl

    from calrec_core import storage
    from calrec_core.experiment.steps import pipeline_views
    from components.train import train_custom_job

    standin, endpoint = vertex_standin
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", cloud_storage.url)
    gcsfs.GCSFileSystem.clear_instance_cache()
    monkeypatch.setattr("google.auth.default", lambda *args, **kwargs: (
        Credentials("stand-in-token"), "test-project"))
    logs = tmp_path / "replicas"
    logs.mkdir()
    standin.custom_job_player = lambda job: LocalReplicas(job, logs)
    data = cloud_storage.folder("ingested")
    storage.copy_tree(ingested, data)
    checkpoints = cloud_storage.folder("checkpoints")
    experiment = dataclasses.replace(preset("tiny"), roles=load_roles_config(
        REPO / "configs" / "sample.yaml"))
    model = dsl.Model(uri=str(tmp_path / "model"), metadata={})
    outputs = {name: kind(uri=str(tmp_path / name), metadata={})
               for name, kind in (("training_metrics", dsl.Metrics), ("loss_curves", dsl.HTML))}
    machines = dict(machine_type="n2-standard-8", replica_count="1", accelerator_type="",
                    accelerator_count="0", tpu_topology="", service_account=SERVICE_ACCOUNT,
                    network="", worker_image=IMAGES.cpu, api_endpoint=endpoint,
                    poll_seconds=0.2)
    train_custom_job(
        dataset=dsl.Dataset(uri=data, metadata={}),
        experiment=json.dumps(pipeline_views(experiment)["train"]), stage=1,
        checkpoint_root=checkpoints, pipeline_root="", run_id="run-1", jax_cache_dir="off",
        timeout_hours=1.0, machine=["2", "8G", "", 0], custom_job=machines,
        project="test-project", location=REGION, model=model,
        gcp_resources=str(tmp_path / "gcp_resources"), **outputs)
    (job,) = standin.custom_jobs.values()
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    work = f"{checkpoints}/run-1/train-stage1"
    (pool,) = job["jobSpec"]["workerPoolSpecs"]
    assert pool["containerSpec"]["command"] == train_command(
        1, data, work, f"{work}.train-config.json")
    assert job["jobSpec"]["serviceAccount"] == SERVICE_ACCOUNT
    assert job["jobSpec"]["scheduling"] == {"timeout": "3600s",
                                            "restartJobOnWorkerRestart": True}
    assert json.loads(storage.path(f"{work}.train-config.json").read_text())["model"] == "tiny"
    # The artifact is the export; its metadata names the job and its machines.
    from calrec_core.model.export import read_model_info

    assert read_model_info(tmp_path / "model")["step"] == model.metadata["selected_step"]
    metadata = model.metadata
    assert metadata["custom_job"] == job["name"] and metadata["hosts"] == 1
    assert metadata["worker_pools"] == [{"machine_spec": {"machineType": "n2-standard-8"},
                                         "replica_count": 1}]
    assert metadata["work_dir"] == work and metadata["checkpoint_subdir"] == "."
    assert metadata["selected_step"] == metadata["result"]["selected_step"]
    assert "selected_step" in outputs["training_metrics"].metadata
    assert "<img" in (tmp_path / "loss_curves").read_text()
    assert json.loads((tmp_path / "gcp_resources").read_text())["resources"][0][
        "resourceUri"] == f"{endpoint}/v1/{job['name']}"

"""Multi-host training: two local processes (4 fake CPU devices each, joined through a
coordinator on 127.0.0.1) run Stage I then Stage II through the real ``calrec train`` command
and give the losses, the selection and the exported model of one process with 8 devices.
Also how the cluster is read from the flags, the CALREC_* variables and Vertex AI's
CLUSTER_SPEC."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from calrec_core.train.distributed import Cluster, detect, initialize

pytestmark = pytest.mark.xdist_group("train_distributed")

# 1-process and 2-process runs reduce in different orders; their float32 losses agree to this.
RTOL = 1e-4
# Seconds any one ``calrec train`` process may take before the test gives up on it.
TIMEOUT = 300
# Stage II selects by the generate-and-fuse NDCG (Stage I by the validation loss), so
# decoding runs across hosts too; two steps, one evaluation. Its train step is Stage I's
# program, compiled once through the shared compilation cache.
STAGE2_SETTINGS = ["--set", "selection_metric=ndcg@10_pes", "--set", "stage2_steps=2",
                   "--set", "eval_every=2"]


def _env(devices: int) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("CALREC_") and name != "CLUSTER_SPEC"}
    return dict(env, JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_args(stage_args, output, cache) -> list[str]:
    return [sys.executable, "-m", "calrec_core.cli", "train", *stage_args, "--output",
            str(output), "--preset", "tiny", "--compilation-cache", str(cache)]


def _result(stdout: str) -> dict:
    return json.loads(stdout[stdout.index("{"):])


def _one_process(stage_args, output, cache) -> dict:
    process = subprocess.run(_train_args(stage_args, output, cache), env=_env(8),
                             capture_output=True, text=True, timeout=TIMEOUT)
    assert process.returncode == 0, process.stderr[-4000:]
    return _result(process.stdout)


def _two_processes(stage_args, output, cache) -> dict:
    coordinator = f"127.0.0.1:{_free_port()}"
    processes = [
        subprocess.Popen(
            [*_train_args(stage_args, output, cache), "--coordinator", coordinator,
             "--num-processes", "2", "--process-id", str(index)],
            env=_env(4), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for index in range(2)
    ]
    outputs = []
    try:
        for process in processes:
            outputs.append(process.communicate(timeout=TIMEOUT))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    for index, (process, (_, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        assert process.returncode == 0, f"process {index}:\n{stderr[-4000:]}"
    assert "process 1 of 2" in outputs[1][1]  # it really joined as the second process
    return _result(outputs[0][0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ingested_sample):
    root = tmp_path_factory.mktemp("distributed")
    cache = root / "jax_cache"
    data = ["--data", str(ingested_sample)]
    results = {}
    for name, train in (("one", _one_process), ("two", _two_processes)):
        stage1 = train(["--stage", "1", *data], root / name / "s1", cache)
        stage2 = train(["--stage", "2", "--category", "Gift_Cards", "--init",
                        stage1["checkpoint_dir"], *data, *STAGE2_SETTINGS],
                       root / name / "s2", cache)
        results[name] = {"s1": stage1, "s2": stage2}
    return results


def _records(run_dir, kind):
    from calrec_core.train import read_metrics

    return [record for record in read_metrics(run_dir) if record["kind"] == kind]


def test_two_processes_give_the_one_process_losses_and_selection(runs):
    for stage, steps in (("s1", 6), ("s2", 2)):
        one, two = runs["one"][stage], runs["two"][stage]
        one_train, two_train = _records(one["run_dir"], "train"), _records(two["run_dir"], "train")
        # One record per step: only process 0 writes the metrics.
        assert [r["step"] for r in two_train] == list(range(1, steps + 1))
        for key in ("loss", "nig", "tt", "ut"):
            np.testing.assert_allclose([r[key] for r in two_train],
                                       [r[key] for r in one_train], rtol=RTOL,
                                       err_msg=f"{stage} {key}")
        # Every host fed its share: the global batch holds the same target tokens.
        assert ([r["target_tokens"] for r in two_train] ==
                [r["target_tokens"] for r in one_train])
        one_eval, two_eval = _records(one["run_dir"], "eval"), _records(two["run_dir"], "eval")
        assert [r["step"] for r in two_eval] == [r["step"] for r in one_eval]
        np.testing.assert_allclose([r["value"] for r in two_eval],
                                   [r["value"] for r in one_eval], rtol=RTOL)
        assert two["selected_step"] == one["selected_step"]
        assert two["metric_name"] == one["metric_name"]
    assert runs["two"]["s2"]["metric_name"] == "ndcg@10_pes"


def test_two_processes_export_the_one_process_model(runs):
    import jax
    from flax import nnx

    from calrec_core.model.export import load_trained, read_model_info
    from calrec_core.train.config import TrainConfig

    # Adam moves a parameter whose gradient is ~0 by up to the learning rate a step, whatever
    # its sign: summation-order noise may flip a few such updates, never a whole tensor.
    step_bound = TrainConfig.tiny().learning_rate
    for stage in ("s1", "s2"):
        exports = [runs[name][stage]["checkpoint_dir"] for name in ("one", "two")]
        one, two = (jax.tree.leaves(nnx.to_pure_dict(nnx.state(load_trained(path)[0],
                                                               nnx.Param)))
                    for path in exports)
        assert len(one) == len(two)
        one = np.concatenate([np.asarray(leaf).ravel() for leaf in one])
        two = np.concatenate([np.asarray(leaf).ravel() for leaf in two])
        np.testing.assert_allclose(two, one, rtol=0, atol=step_bound, err_msg=stage)
        close = np.isclose(two, one, rtol=RTOL, atol=1e-5)
        assert close.mean() > 0.999, f"{stage}: {np.sum(~close)} of {close.size} differ"
        info = read_model_info(exports[1])
        assert info["step"] == runs["one"][stage]["selected_step"]
    # Stage II of the two-process run started from the two-process Stage I export.
    assert read_model_info(runs["two"]["s2"]["checkpoint_dir"])["init"] == \
        runs["two"]["s1"]["checkpoint_dir"]


VERTEX_SPEC = {
    "cluster": {
        "workerpool0": ["chief-0:2222"],
        "workerpool1": ["worker-0:2222", "worker-1:2222"],
    },
    "environment": "cloud",
    "task": {"type": "workerpool1", "index": 1},
    "job": "{}",
}


def test_cluster_from_flags_variables_and_vertex():
    assert detect(environ={}) is None
    # Flags win over the variables; one process is no cluster at all.
    env = {"CALREC_COORDINATOR": "10.0.0.1:1234", "CALREC_NUM_PROCESSES": "4",
           "CALREC_PROCESS_ID": "3"}
    assert detect(environ=env) == Cluster("10.0.0.1:1234", 4, 3, "explicit")
    assert detect("h:1", 2, 0, environ=env) == Cluster("h:1", 2, 0, "explicit")
    assert detect(num_processes=1, environ={}) is None
    # Vertex AI: the chief is process 0, worker pool 1's replicas follow in order.
    spec = json.dumps(VERTEX_SPEC)
    assert detect(environ={"CLUSTER_SPEC": spec}) == Cluster("chief-0:2222", 3, 2, "vertex")
    chief = json.dumps({**VERTEX_SPEC, "task": {"type": "workerpool0", "index": 0}})
    assert detect(environ={"CLUSTER_SPEC": chief}) == Cluster("chief-0:2222", 3, 0, "vertex")
    alone = json.dumps({"cluster": {"workerpool0": ["chief-0:2222"]},
                        "task": {"type": "workerpool0", "index": 0}})
    assert detect(environ={"CLUSTER_SPEC": alone}) is None
    # Explicit values override what Vertex says.
    assert detect(environ={"CLUSTER_SPEC": spec, **env}).source == "explicit"


@pytest.mark.parametrize("flags, env, message", [
    ({"coordinator": "h:1"}, {}, "needs the coordinator address"),
    ({"num_processes": 2, "process_id": 2, "coordinator": "h:1"}, {}, "not in [0, 2)"),
    ({"num_processes": 2, "process_id": 0, "coordinator": "h"}, {}, "host:port"),
    ({}, {"CALREC_NUM_PROCESSES": "two"}, "must be an integer"),
    ({}, {"CLUSTER_SPEC": "{not json"}, "cannot read CLUSTER_SPEC"),
    ({}, {"CLUSTER_SPEC": json.dumps({**VERTEX_SPEC,
                                      "task": {"type": "workerpool2", "index": 0}})},
     "only workerpool0 and workerpool1 run training"),
])
def test_bad_cluster_descriptions_fail_clearly(flags, env, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        detect(**flags, environ=env)


def test_initialize_is_a_no_op_for_one_process():
    import jax

    assert initialize(environ={}) is None
    assert initialize(num_processes=1, environ={}) is None
    assert not jax.distributed.is_initialized()


def test_a_cluster_after_jax_started_alone_is_refused():
    import jax

    jax.devices()  # this test process's backend is up, without a cluster
    env = {"CALREC_COORDINATOR": "127.0.0.1:1", "CALREC_NUM_PROCESSES": "2",
           "CALREC_PROCESS_ID": "0"}
    with pytest.raises(RuntimeError, match="already started alone"):
        initialize(environ=env)


def test_train_refuses_a_partial_cluster_description(tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "calrec_core.cli", "train", "--stage", "1", "--data",
         str(tmp_path), "--output", str(tmp_path / "out"), "--preset", "tiny",
         "--num-processes", "2"],
        env=_env(1), capture_output=True, text=True, timeout=120)
    assert process.returncode == 2
    assert "needs the coordinator address" in process.stderr

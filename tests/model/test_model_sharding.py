"""Sharded over 8 fake CPU devices, the model and the sampler give the 1-device results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from calrec_core.model import Gemma3, Gemma3Config, generate, make_mesh

SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from flax import nnx
    from calrec_core.model import Gemma3, Gemma3Config, generate, make_mesh, shard_model

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 512, (8, 24)).astype(np.int32)
    positions = np.broadcast_to(np.arange(24, dtype=np.int32), (8, 24))
    prompts = [[2, 5, 9], [2] + list(range(10, 40)), [2, 77]]
    results = {}
    for data, fsdp, tensor in ((8, 1, 1), (2, 2, 2)):
        mesh = make_mesh(data=data, fsdp=fsdp, tensor=tensor)
        model = shard_model(Gemma3(Gemma3Config.tiny(), rngs=nnx.Rngs(0)), mesh)
        assert len(model.embedding[...].sharding.device_set) == 8
        with jax.set_mesh(mesh):
            out = nnx.jit(lambda m, t, p: m(t, p, t > 0, logits_at=p))(model, tokens, positions)
        samples = generate(model, prompts, num_samples=4, max_new_tokens=10, seed=5, mesh=mesh,
                           batch_size=8, stop_ids=())
        results[f"{data}x{fsdp}x{tensor}"] = {
            "hidden": np.asarray(out.hidden).tolist(),
            "logits": np.asarray(out.logits)[:, :, :64].tolist(),
            "ids": [[list(s.token_ids) for s in row] for row in samples],
            "logprobs": [[s.logprob for s in row] for row in samples],
        }
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def eight_devices():
    """Results on meshes (data, fsdp, tensor) = 8x1x1 and 2x2x2 of 8 fake CPU devices."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    env.pop("JAX_PLATFORMS", None)
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def single_device():
    model = Gemma3(Gemma3Config.tiny(), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 512, (8, 24)).astype(np.int32)
    positions = np.broadcast_to(np.arange(24, dtype=np.int32), (8, 24))
    out = nnx.jit(lambda m, t, p: m(t, p, t > 0, logits_at=p))(model, tokens, positions)
    prompts = [[2, 5, 9], [2] + list(range(10, 40)), [2, 77]]
    samples = generate(
        model, prompts, num_samples=4, max_new_tokens=10, seed=5, batch_size=8, stop_ids=()
    )
    return {
        "hidden": np.asarray(out.hidden),
        "logits": np.asarray(out.logits)[:, :, :64],
        "ids": [[list(s.token_ids) for s in row] for row in samples],
        "logprobs": [[s.logprob for s in row] for row in samples],
    }


@pytest.mark.parametrize("mesh_shape", ["8x1x1", "2x2x2"])
def test_eight_devices_match_one(single_device, eight_devices, mesh_shape):
    sharded = eight_devices[mesh_shape]
    np.testing.assert_allclose(sharded["hidden"], single_device["hidden"], atol=1e-5)
    np.testing.assert_allclose(sharded["logits"], single_device["logits"], atol=1e-5)
    assert sharded["ids"] == single_device["ids"]
    np.testing.assert_allclose(sharded["logprobs"], single_device["logprobs"], atol=1e-4)


def test_make_mesh_shapes():
    mesh = make_mesh()
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert mesh.shape["data"] == jax.device_count()
    with pytest.raises(ValueError):
        make_mesh(data=-1, fsdp=-1)
    with pytest.raises(ValueError):
        make_mesh(data=1, fsdp=1, tensor=jax.device_count() + 1)

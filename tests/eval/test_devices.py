"""Same inputs and seed give the same evaluation on 1 and on 8 (host) devices, whatever the
prompt-length bucket and decode batch (the accelerator settings of EvalConfig)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

_SCRIPT = """
import json, sys
from flax import nnx
import jax
from calrec_core.eval import EvalConfig, run_evaluation
from calrec_core.model import Gemma3, Gemma3Config, make_tiny_tokenizer
loaded = Gemma3(Gemma3Config.tiny(), rngs=nnx.Rngs(0)), make_tiny_tokenizer()
import dataclasses
# One decode batch: compiling, not sampling, is what costs here.
config = dataclasses.replace(EvalConfig.tiny(), max_users=3, n_gen=2, user_batch_size=3,
                             **json.loads(sys.argv[3]))
from calrec_core.eval.generation import default_mesh
mesh = default_mesh()
result = run_evaluation(sys.argv[1], "Gift_Cards", sys.argv[2], methods=["calrec"],
                        config=config, model_and_tokenizer=loaded, show_progress=False)
import pandas as pd
rows = pd.read_parquet(sys.argv[2] + "/predictions.parquet")
print(json.dumps({"devices": jax.device_count(), "metrics": result["methods"]["calrec"],
                  "data_axis": None if mesh is None else mesh.shape["data"],
                  "generations": [list(g) for g in rows["generations"]]}))
"""


def _run(data_dir, out_dir, devices: int, **overrides) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    completed = subprocess.run([sys.executable, "-c", _SCRIPT, str(data_dir), str(out_dir),
                                json.dumps(overrides)],
                               env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.xdist_group("eval_devices")
def test_one_and_eight_devices_agree(gift_cards_dir, tmp_path):
    one = _run(gift_cards_dir, tmp_path / "one", 1)
    # Rows split over the data axis, wider prompt buckets, another decode batch.
    eight = _run(gift_cards_dir, tmp_path / "eight", 8, length_bucket=128, decode_batch_size=8)
    assert (one["devices"], eight["devices"]) == (1, 8)
    assert (one["data_axis"], eight["data_axis"]) == (None, 8)
    assert eight["generations"] == one["generations"]
    assert eight["metrics"] == one["metrics"]

"""Exports that a kill cannot leave half-written, and stage runs that refuse to resume on
changed inputs (tiny random model on the ingested bundled sample)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import types

import jax
import numpy as np
import pytest
from flax import nnx

from calrec_core.errors import StaleOutputError
from calrec_core.fingerprint import arrays_digest
from calrec_core.model import export
from calrec_core.train.config import TrainConfig
from calrec_core.train.models import fresh_model

pytestmark = pytest.mark.xdist_group("train_stages")


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _loaded_params(directory):
    model, _ = export.load_trained(directory)
    return _params(model)


def test_an_export_killed_half_way_leaves_the_previous_one_whole(tmp_path, monkeypatch):
    model, tokenizer = fresh_model(TrainConfig.tiny())
    first = _params(model)
    directory = tmp_path / "selected"
    export.export_trained(directory, first, model, tokenizer, "tiny", {"step": 1})

    second = jax.tree.map(lambda leaf: leaf + 1.0, first)

    def killed(*args, **kwargs):  # dies after the parameters, before model.json
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(export, "json", types.SimpleNamespace(dumps=killed, loads=json.loads))
    with pytest.raises(KeyboardInterrupt):
        export.export_trained(directory, second, model, tokenizer, "tiny", {"step": 2})
    monkeypatch.undo()
    assert export.read_model_info(directory)["step"] == 1
    jax.tree.map(np.testing.assert_array_equal, _loaded_params(directory), first)
    assert export.read_model_info(directory)["fingerprint"] == arrays_digest(first)

    export.export_trained(directory, second, model, tokenizer, "tiny", {"step": 2})
    loaded = _loaded_params(directory)
    jax.tree.map(np.testing.assert_array_equal, loaded, second)
    assert export.model_fingerprint(directory) == arrays_digest(loaded) != arrays_digest(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selected"]  # nothing left aside


def test_a_stage_run_refuses_to_resume_on_changed_data(ingested_sample, tmp_path):
    from calrec_core.data.reader import shard_paths
    from calrec_core.data.records import iter_records, write_records
    from calrec_core.train.stages import run_stage1

    data = tmp_path / "data"
    shutil.copytree(ingested_sample, data)
    config = TrainConfig.tiny()
    run = tmp_path / "s1"
    result = run_stage1(data, run, dataclasses.replace(config, stage1_steps=3))

    # One user fewer in a training split: the resumed batches would silently differ.
    (path,) = shard_paths(data, "Gift_Cards", "train")
    with open(path, "rb") as stream:
        kept = list(iter_records(stream))[1:]
    with open(path, "wb") as stream:
        write_records(stream, kept)
    with pytest.raises(StaleOutputError, match="the training data changed"):
        run_stage1(data, run, config)
    info = json.loads((run / "selected" / "model.json").read_text())
    assert set(info["inputs"]) == {"data", "init"}
    assert info["fingerprint"] == arrays_digest(_loaded_params(result.checkpoint_dir))

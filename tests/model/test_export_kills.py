"""Exports under any sequence of kills: a reader always finds the newest complete export.

A kill is simulated by interrupting the export at its k-th file-system step (each rename,
folder removal and the write of model.json, those of the recovery an export starts with
included); random k over several exports in a row, seeded."""

from __future__ import annotations

import json
import os
import random

import jax
import numpy as np
import pytest
from flax import nnx

from calrec_core import storage
from calrec_core.model import export
from calrec_core.train.config import TrainConfig
from calrec_core.train.models import fresh_model


class Killed(BaseException):
    """Stands in for SIGKILL: nothing after it runs (not an Exception, so nothing catches it)."""


class _Steps:
    """Proxies of ``os`` and ``storage`` for export.py that die at the ``kill_at``-th step."""

    def __init__(self) -> None:
        self.kill_at = None
        self.count = 0

    def step(self) -> None:
        self.count += 1
        if self.kill_at is not None and self.count == self.kill_at:
            raise Killed

    def module(self, real, names):
        steps = self

        class Proxy:
            def __getattr__(self, name):
                value = getattr(real, name)
                if name not in names:
                    return value

                def counted(*args, **kwargs):
                    steps.step()
                    return value(*args, **kwargs)

                return counted

        return Proxy()


def _params(model):
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


@pytest.mark.parametrize("seed", [0, 1])
def test_readers_find_the_newest_complete_export_after_any_kills(tmp_path, monkeypatch, seed):
    rng = random.Random(seed)
    model, tokenizer = fresh_model(TrainConfig.tiny())
    base = _params(model)
    directory = tmp_path / "selected"
    steps = _Steps()
    monkeypatch.setattr(export, "os", steps.module(os, {"replace"}))
    monkeypatch.setattr(export, "storage", steps.module(storage, {"remove_tree",
                                                                 "write_atomic"}))

    def params_of(step):
        return jax.tree.map(lambda leaf: leaf + float(step), base)

    newest = None  # the step of the newest export that completed (model.json written)
    for step in range(1, 8):
        steps.count, steps.kill_at = 0, rng.randint(1, 9)  # 9 > the steps of one export
        try:
            export.export_trained(directory, params_of(step), model, tokenizer, "tiny",
                                  {"step": step})
            newest = step
        except Killed:
            infos = [folder / export.MODEL_FILE for folder in (
                directory, tmp_path / ".selected.partial", tmp_path / ".selected.old")]
            if any(info.is_file() and json.loads(info.read_text())["step"] == step
                   for info in infos):
                newest = step  # killed after its model.json: it is complete, and the newest
        steps.kill_at = None
        if newest is None:
            with pytest.raises(FileNotFoundError, match="not an exported calrec model"):
                export.read_model_info(directory)
            continue
        assert export.read_model_info(directory)["step"] == newest
        loaded, _ = export.load_trained(directory)
        jax.tree.map(np.testing.assert_array_equal, _params(loaded), params_of(newest))
    # A last export after all the kills leaves one folder and nothing aside.
    export.export_trained(directory, params_of(9), model, tokenizer, "tiny", {"step": 9})
    assert export.read_model_info(directory)["step"] == 9
    assert sorted(p.name for p in tmp_path.iterdir()) == ["selected"]


def test_the_reported_sequence_two_kills_then_a_reader(tmp_path, monkeypatch):
    """Killed between the export's two renames, then the resumed run's re-export killed at
    its second rename: the earlier code left only .selected.partial, which no reader took."""
    model, tokenizer = fresh_model(TrainConfig.tiny())
    first = _params(model)
    directory = tmp_path / "selected"
    export.export_trained(directory, first, model, tokenizer, "tiny", {"step": 1})
    second = jax.tree.map(lambda leaf: leaf + 1.0, first)
    real_replace = os.replace
    calls = []

    def replace_killed_at(n):
        def replace(source, target):
            calls.append((source, target))
            if len(calls) == n:
                raise Killed
            return real_replace(source, target)
        return replace

    # Kill 1 (renames: model.json's, the old export aside, the new one in): between the last two.
    monkeypatch.setattr(os, "replace", replace_killed_at(3))
    with pytest.raises(Killed):
        export.export_trained(directory, second, model, tokenizer, "tiny", {"step": 2})
    calls.clear()
    assert export.read_model_info(directory)["step"] == 2
    # Kill 2: the resumed run's re-export dies at its second rename.
    monkeypatch.setattr(os, "replace", replace_killed_at(2))
    with pytest.raises(Killed):
        export.export_trained(directory, second, model, tokenizer, "tiny", {"step": 2})
    monkeypatch.undo()
    assert export.read_model_info(directory)["step"] == 2
    loaded, _ = export.load_trained(directory)
    jax.tree.map(np.testing.assert_array_equal, _params(loaded), second)

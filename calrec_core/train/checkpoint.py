"""Orbax checkpoints: resumable training state (the exported model is ``calrec_core.model.export``).

A resumable checkpoint holds parameters, optimizer state and a JSON record of the step (which
is also the data-iterator position, batches being a pure function of (seed, step)), the seed,
the sampler stream and the model's architecture, and the fingerprints of the run's inputs
(``stage_inputs``): a run resumed on other data or from another starting model is refused.
"""

from __future__ import annotations

from typing import Any

import jax
import orbax.checkpoint as ocp

from calrec_core import storage
from calrec_core.errors import StaleOutputError
from calrec_core.fingerprint import arrays_digest, files_digest, json_digest


class CheckpointStore:
    """Resumable checkpoints of one run, the newest ``max_to_keep`` kept (saved asynchronously)."""

    def __init__(self, directory, max_to_keep: int) -> None:
        self.directory = storage.path(directory)  # Orbax writes gs:// itself
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, params, opt_state, record: dict[str, Any]) -> None:
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"params": params, "opt_state": opt_state}),
                record=ocp.args.JsonSave(record),
            ),
        )

    def read_record(self, step: int) -> dict[str, Any]:
        restored = self.manager.restore(
            step, args=ocp.args.Composite(record=ocp.args.JsonRestore())
        )
        return dict(restored.record)

    def restore(self, step: int, abstract_params, abstract_opt_state):
        """(params, opt_state, record) of ``step``, placed like the abstract targets."""
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(
                    {"params": abstract_params, "opt_state": abstract_opt_state}
                ),
                record=ocp.args.JsonRestore(),
            ),
        )
        return restored.state["params"], restored.state["opt_state"], dict(restored.record)

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree):
    """ShapeDtypeStructs (with shardings) of a tree of arrays, the target of a restore."""
    return jax.tree.map(
        lambda array: jax.ShapeDtypeStruct(array.shape, array.dtype, sharding=array.sharding),
        tree,
    )


def stage_inputs(data_dir, weights: dict[str, float], selection, params) -> dict[str, str]:
    """Fingerprints of what a stage run is computed from: the training and selection splits'
    contents with the mixture weights, and the starting parameters (pretrained or --init)."""
    from calrec_core.data.reader import has_split, shard_paths

    paths = []
    for category in sorted(set(weights) | set(selection)):
        for split in ("train", "valid"):
            if has_split(data_dir, category, split):
                paths += shard_paths(data_dir, category, split)
    root = storage.path(data_dir)
    return {
        "data": json_digest([files_digest(paths, root=root), sorted(weights.items()),
                             sorted(selection)]),
        "init": arrays_digest(params),
    }


def check_same_inputs(recorded: dict[str, str] | None, current: dict[str, str], where) -> None:
    """Refuses to resume a run whose inputs changed (a record without them predates them)."""
    if recorded is None:
        return
    changed = sorted(name for name in current if recorded.get(name) != current[name])
    if changed:
        names = {"data": "the training data", "init": "the starting model"}
        raise StaleOutputError(
            f"{where}: cannot resume, {' and '.join(names.get(n, n) for n in changed)} changed "
            "since its checkpoints were written; use a new output folder")

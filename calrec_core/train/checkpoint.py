"""Orbax checkpoints: resumable training state (the exported model is ``calrec_core.model.export``).

A resumable checkpoint holds parameters, optimizer state and a JSON record of the step (which
is also the data-iterator position, batches being a pure function of (seed, step)), the seed,
the sampler stream and the model's architecture.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointStore:
    """Resumable checkpoints of one run, the newest ``max_to_keep`` kept (saved asynchronously)."""

    def __init__(self, directory, max_to_keep: int) -> None:
        self.directory = pathlib.Path(directory).absolute()
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

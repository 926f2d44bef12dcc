"""The one table from logical axis names to mesh axes, and the helpers that apply it.

Parameters carry logical names (``out_sharding`` metadata) and activations are
constrained by logical names; only this table knows the mesh. Mesh axes: 'data' (pure
data parallel), 'fsdp' (batch and parameter sharding), 'tensor' (heads / mlp / vocab).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axes (None = replicated). Parameter names first, activations after.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Parameters.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", None),  # Gemma 3 270M has one KV head: nothing to split.
    ("head_dim", None),
    ("mlp", "tensor"),
    ("norm", None),
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("cache_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("positions", None),
)
_RULES = dict(LOGICAL_AXIS_RULES)


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """Maps logical axis names to a PartitionSpec through ``LOGICAL_AXIS_RULES``."""
    unknown = [name for name in logical_axes if name is not None and name not in _RULES]
    if unknown:
        raise KeyError(f"logical axes {unknown} have no rule in LOGICAL_AXIS_RULES")
    return PartitionSpec(*(None if name is None else _RULES[name] for name in logical_axes))


def logical_to_sharding(logical_axes: Sequence[str | None], mesh: Mesh) -> NamedSharding:
    """The NamedSharding of an array with these logical axes on ``mesh``."""
    return NamedSharding(mesh, logical_to_spec(logical_axes))


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1, devices=None) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh; one size may be -1 to take the remaining devices."""
    devices = list(jax.devices() if devices is None else devices)
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError("at most one mesh axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not split into {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        shape = dict(zip(MESH_AXES, sizes, strict=True))
        raise ValueError(f"mesh {shape} needs {np.prod(sizes)} devices, have {len(devices)}")
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names under an active mesh (``jax.set_mesh``); else x."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes))


def batch_multiple(mesh: Mesh | None) -> int:
    """How many rows a batch must be a multiple of to split over the mesh's batch axes."""
    if mesh is None:
        return 1
    return int(np.prod([mesh.shape[axis] for axis in ("data", "fsdp")]))


def param_shardings(model: nnx.Module, mesh: Mesh):
    """NamedShardings for the model's state, from each parameter's logical axis names."""
    state = nnx.state(model)

    def sharding_of(variable):
        names = variable.get_metadata().get("out_sharding")
        spec = logical_to_spec(names) if names else PartitionSpec()
        return variable.replace(NamedSharding(mesh, spec))

    return jax.tree.map(
        sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def shard_model(model: nnx.Module, mesh: Mesh) -> nnx.Module:
    """Places the model's parameters on ``mesh`` (in place) following the rules table."""
    state = nnx.state(model)
    shardings = param_shardings(model, mesh)
    nnx.update(model, jax.device_put(state, shardings))
    return model

"""One mesh (data, fsdp, tensor) and one table that maps logical axis names to it.

Every model parameter carries `logical_axes` metadata (e.g. ("embed", "vocab")); `RULES` says which
mesh axes each name is split over. A dimension whose size does not divide over its mesh axes is
replicated instead (e.g. 2 KV heads on tensor=4), so one table serves every model size.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH = "batch"

# logical axis name -> mesh axis (or tuple of axes); names not listed are replicated
RULES: dict[str, str | tuple[str, ...] | None] = {
    BATCH: ("data", "fsdp"),
    "vocab": "tensor",
    "embed": "fsdp",
    "q_heads": "tensor",
    "kv_heads": "tensor",
    "mlp": "tensor",
    "head_dim": None,
    "norm": None,
    "value": None,
    "length": None,
}


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
    """(data, fsdp, tensor) sizes with at most one -1 resolved to "all remaining devices"."""
    unknown = [k for k in MESH_AXES if int(sizes.get(k, 1)) == -1]
    if len(unknown) > 1:
        raise ValueError(f"mesh: only one axis may be -1, got {unknown}")
    known = math.prod(int(sizes.get(k, 1)) for k in MESH_AXES if k not in unknown)
    if known <= 0 or num_devices % known:
        raise ValueError(f"mesh: sizes {dict(sizes)} do not divide {num_devices} devices")
    shape = tuple(num_devices // known if k in unknown else int(sizes.get(k, 1)) for k in MESH_AXES)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh: sizes {dict(sizes)} use {math.prod(shape)} of {num_devices} devices; "
                         f"set one axis to -1 or make the product match")
    return shape


def make_mesh(sizes: Mapping[str, int] | None = None, devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all of them)."""
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(dict(sizes or {"fsdp": -1}), len(devices))
    return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3, devices=devices)


def _mesh_sizes(mesh) -> dict[str, int]:
    return dict(zip(mesh.axis_names, mesh.axis_sizes))


def logical_to_spec(names: Sequence[str | None], shape: Sequence[int], mesh) -> P:
    """PartitionSpec for an array with logical axis `names`; axes that do not divide evenly, or whose
    mesh axes are already used by an earlier dimension, stay replicated."""
    sizes = _mesh_sizes(mesh)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        rule = RULES.get(name) if name else None
        axes = tuple(a for a in ((rule,) if isinstance(rule, str) else (rule or ())) if a in sizes and a not in used)
        split = math.prod(sizes[a] for a in axes)
        if not axes or split == 1 or dim % split:
            spec.append(None)
            continue
        used.update(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def state_shardings(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """NamedSharding tree for nnx state (or a tree of Variables/arrays): parameters follow their
    `logical_axes` by `RULES`; everything else is replicated."""

    def one(x):
        if isinstance(x, nnx.Variable):
            names = x.get_metadata().get("logical_axes")
            shape = np.shape(x.get_value())
            spec = logical_to_spec(names, shape, mesh) if names else P()
            return x.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, P())

    return jax.tree.map(one, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int, batch_size: int) -> NamedSharding:
    """Sharding of an array whose leading axis is the batch: over (data, fsdp) where it divides."""
    return NamedSharding(mesh, logical_to_spec((BATCH,) + (None,) * (ndim - 1), (batch_size,) + (1,) * (ndim - 1), mesh))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Pins an activation's layout by logical names when a mesh is active (`jax.set_mesh`); no-op otherwise."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not set(MESH_AXES) <= set(mesh.axis_names):
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh))

"""Building models: fresh random ones (optionally straight onto a mesh), placing host tensors into
their shardings, growing the vocabulary, a PPM from a policy in memory, and the functional split."""
from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rstar_jax import sharding
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import Qwen2ForCausalLM, Qwen2PPM

Model = Qwen2ForCausalLM | Qwen2PPM


def init_model(config: Qwen2Config, *, seed: int = 0, param_dtype=jnp.float32, dtype=None,
               mesh: jax.sharding.Mesh | None = None, ppm: bool = False, head_init_std: float | None = None,
               ppm_head: str = "value") -> Model:
    """A freshly initialised policy (or PPM with `ppm=True`, its head `ppm_head`): weights N(0, initializer_range) drawn on
    the host per parameter (seeded by `seed` and its path; XLA's CPU compile of a jitted random init
    takes seconds even for tiny models), biases 0, norms 1; with a mesh each device gets its slice."""
    kw = dict(param_dtype=param_dtype, dtype=dtype)
    if ppm:
        kw["head_init_std"], kw["head"] = head_init_std, ppm_head

    def make():
        return (Qwen2PPM if ppm else Qwen2ForCausalLM)(config, rngs=nnx.Rngs(seed), **kw)

    def draw(path, var):
        init = var.get_metadata()["init"]
        shape = var.get_value().shape
        if init in ("zeros", "ones"):
            return (np.zeros if init == "zeros" else np.ones)(shape, np.float32)
        rng = np.random.default_rng([seed, zlib.crc32("/".join(map(str, path)).encode())])
        return rng.standard_normal(shape, np.float32) * np.float32(init)

    return place_state(nnx.eval_shape(make), draw, mesh)


def place_state(model_abstract: Model, host_value: Callable[[tuple, nnx.Variable], np.ndarray],
                mesh: jax.sharding.Mesh | None) -> Model:
    """Fills an abstract model (from nnx.eval_shape) with `host_value(path, variable)` arrays, one
    tensor at a time; with a mesh each device receives only its own slice."""
    graphdef, abstract = nnx.split(model_abstract)
    shardings = sharding.state_shardings(abstract, mesh) if mesh is not None else None
    flat = nnx.to_flat_state(abstract)
    flat_sh = nnx.to_flat_state(shardings) if shardings is not None else None
    leaves = []
    for i, (path, var) in enumerate(flat):
        host = host_value(path, var)
        want = tuple(var.get_value().shape)
        if tuple(host.shape) != want:
            raise ValueError(f"parameter {'.'.join(map(str, path))}: got shape {host.shape}, expected {want}")
        host = host.astype(var.get_value().dtype)
        if mesh is None:
            arr = jnp.asarray(host)
        else:
            sh = flat_sh[i][1].get_value()
            arr = jax.make_array_from_callback(host.shape, sh, lambda idx, h=host: h[idx])
        leaves.append((path, var.replace(arr)))
    return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def functional(model: nnx.Module, method: str = "__call__") -> tuple[Callable[..., Any], Any]:
    """(fn, state) with `fn(state, *args, **kw)` a pure function of arrays (jit it yourself), so hot
    loops skip nnx's per-call Python graph traversal."""
    graphdef, state = nnx.split(model)

    def fn(state, *args, **kw):
        return getattr(nnx.merge(graphdef, state), method)(*args, **kw)

    return fn, state


def _grow_rows(table: np.ndarray, old: int, new: int, padded: int, axis: int) -> np.ndarray:
    """Rows [0, old) kept, new rows [old, new) set to the mean of the old ones, padding rows zero."""
    table = np.moveaxis(table, axis, 0)
    out = np.zeros((padded,) + table.shape[1:], table.dtype)
    out[:old] = table[:old]
    out[old:new] = table[:old].astype(np.float32).mean(axis=0).astype(table.dtype)
    return np.moveaxis(out, 0, axis)


def resize_vocab(model: Model, vocab_size: int) -> Model:
    """A copy of `model` with `vocab_size` token rows (never fewer than now). New embedding rows, and
    new output columns of an untied head, start at the mean of the existing ones, so a new token
    initially behaves like an average token instead of a random one."""
    cfg = model.config
    if vocab_size < cfg.vocab_size:
        raise ValueError(f"resize_vocab: cannot shrink vocab_size from {cfg.vocab_size} to {vocab_size}")
    new_cfg = cfg.replace(vocab_size=vocab_size)
    shapes = nnx.eval_shape(lambda: type(model)(new_cfg, rngs=nnx.Rngs(0), param_dtype=model.model.embed.get_value().dtype,
                                                dtype=model.dtype))
    old_flat = dict(nnx.to_flat_state(nnx.state(model)))
    mesh = _mesh_of(model.model.embed.get_value())

    def value(path, var):
        host = np.asarray(jax.device_get(old_flat[path].get_value()))
        if path == ("model", "embed"):
            return _grow_rows(host, cfg.vocab_size, vocab_size, new_cfg.padded_vocab, 0)
        if path == ("lm_head",):
            return _grow_rows(host, cfg.vocab_size, vocab_size, new_cfg.padded_vocab, 1)
        return host

    return place_state(shapes, value, mesh)


def ppm_from_policy(policy: Qwen2ForCausalLM, *, head_init_std: float | None = None, head_seed: int = 0) -> Qwen2PPM:
    """A PPM whose backbone is (a copy of) the policy's and whose value head is freshly drawn from
    N(0, head_init_std) with `head_seed`, bias 0; the policy's LM head is dropped."""
    cfg = policy.config
    shapes = nnx.eval_shape(lambda: Qwen2PPM(cfg, rngs=nnx.Rngs(0), param_dtype=policy.model.embed.get_value().dtype,
                                             dtype=policy.dtype, head_init_std=head_init_std))
    src = dict(nnx.to_flat_state(nnx.state(policy)))
    std = cfg.initializer_range if head_init_std is None else head_init_std
    head = np.asarray(jax.random.normal(jax.random.key(head_seed), (cfg.hidden_size, 1), jnp.float32)) * std

    def value(path, var):
        if path == ("v_head_w",):
            return head
        if path == ("v_head_b",):
            return np.zeros((1,), np.float32)
        return np.asarray(jax.device_get(src[path].get_value()))

    return place_state(shapes, value, _mesh_of(policy.model.embed.get_value()))


def _mesh_of(x: jax.Array) -> jax.sharding.Mesh | None:
    """The mesh an array lives on, if it is NamedSharded over one with our axes."""
    sh = getattr(x, "sharding", None)
    if isinstance(sh, jax.sharding.NamedSharding) and set(sharding.MESH_AXES) <= set(sh.mesh.axis_names):
        return sh.mesh
    return None

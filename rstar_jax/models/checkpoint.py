"""HF checkpoints without torch: `config.json` + `*.safetensors` (single file or sharded with
`model.safetensors.index.json`) in, the same out. Tensors are memory-mapped and converted one at a
time; with a mesh each device receives only its slice. The PPM's value head (`v_head.weight`,
`v_head.bias`) travels in the same files, so a saved PPM restores with its head.
"""
from __future__ import annotations

import json
import os
import struct
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from etils import epath
from flax import nnx

from rstar_jax.io import InputError, atomic_write_bytes, atomic_write_text
from rstar_jax.models.build import Model, place_state
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import Qwen2ForCausalLM, Qwen2PPM

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
           "I64": np.int64, "I32": np.int32}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}
INDEX = "model.safetensors.index.json"


# ---------------------------------------------------------------- safetensors format


def _read_header(path: epath.Path) -> tuple[dict[str, Any], int]:
    with path.open("rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise InputError(f"{path}: not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", raw)
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: safetensors header is not valid JSON ({e})") from None
    header.pop("__metadata__", None)
    return header, 8 + n


class TensorFiles:
    """Name -> lazily read numpy tensor over every safetensors file of a checkpoint directory."""

    def __init__(self, directory: epath.PathLike):
        self.dir = epath.Path(directory)
        index = self.dir / INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(f"{index}: expected JSON with a 'weight_map' field ({e})") from None
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in self.dir.glob("*.safetensors"))
            if not files:
                raise InputError(f"{self.dir}: no *.safetensors files and no {INDEX}")
        self.entries: dict[str, tuple[epath.Path, dict, int]] = {}
        for name in files:
            path = self.dir / name
            if not path.exists():
                raise InputError(f"{index}: names shard {name}, which does not exist")
            header, start = _read_header(path)
            for key, meta in header.items():
                self.entries[key] = (path, meta, start)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> np.ndarray:
        if name not in self.entries:
            raise InputError(f"{self.dir}: tensor {name!r} missing from the checkpoint")
        path, meta, start = self.entries[name]
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise InputError(f"{path}: tensor {name!r} has unsupported dtype {meta['dtype']}")
        lo, hi = meta["data_offsets"]
        arr = np.memmap(os.fspath(path), dtype=np.uint8, mode="r", offset=start + lo, shape=(hi - lo,))
        return arr.view(dtype).reshape(meta["shape"])


def _serialize(tensors: dict[str, np.ndarray]) -> bytes:
    """safetensors bytes of `tensors` (C-order, 8-byte aligned header)."""
    header, offset, blobs = {}, 0, []
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        data = arr.tobytes()
        header[name] = {"dtype": _NAMES[arr.dtype], "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    return struct.pack("<Q", len(head)) + head + b"".join(blobs)


# ---------------------------------------------------------------- name and layout mapping


def _hf_tensor(path: tuple, cfg: Qwen2Config) -> tuple[str, str]:
    """(HF tensor name, conversion kind) of one of our parameter paths."""
    if path == ("model", "embed"):
        return "model.embed_tokens.weight", "embed"
    if path == ("model", "norm"):
        return "model.norm.weight", "copy"
    if path == ("lm_head",):
        return "lm_head.weight", "lm_head"
    if path == ("v_head_w",):
        return "v_head.weight", "T"
    if path == ("v_head_b",):
        return "v_head.bias", "copy"
    _, _, i, *rest = path
    prefix = f"model.layers.{i}."
    names = {
        ("input_norm",): ("input_layernorm.weight", "copy"),
        ("post_norm",): ("post_attention_layernorm.weight", "copy"),
        ("attn", "q_w"): ("self_attn.q_proj.weight", "proj"),
        ("attn", "k_w"): ("self_attn.k_proj.weight", "proj"),
        ("attn", "v_w"): ("self_attn.v_proj.weight", "proj"),
        ("attn", "q_b"): ("self_attn.q_proj.bias", "bias"),
        ("attn", "k_b"): ("self_attn.k_proj.bias", "bias"),
        ("attn", "v_b"): ("self_attn.v_proj.bias", "bias"),
        ("attn", "o_w"): ("self_attn.o_proj.weight", "o"),
        ("mlp", "gate"): ("mlp.gate_proj.weight", "T"),
        ("mlp", "up"): ("mlp.up_proj.weight", "T"),
        ("mlp", "down"): ("mlp.down_proj.weight", "T"),
    }
    name, kind = names[tuple(rest)]
    return prefix + name, kind


def _pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + x.shape[1:], x.dtype)
    out[: x.shape[0]] = x
    return out


def _to_ours(hf: np.ndarray, kind: str, shape: tuple, cfg: Qwen2Config) -> np.ndarray:
    if kind == "copy":
        return np.asarray(hf)
    if kind == "bias":
        return np.asarray(hf).reshape(shape)
    if kind == "T":
        return np.asarray(hf).T
    if kind == "proj":  # [heads*head_dim, hidden] -> [hidden, heads, head_dim]
        return np.asarray(hf).T.reshape(shape)
    if kind == "o":  # [hidden, heads*head_dim] -> [heads, head_dim, hidden]
        return np.asarray(hf).T.reshape(shape)
    if kind == "embed":
        return _pad_rows(np.asarray(hf), cfg.padded_vocab)
    if kind == "lm_head":
        return _pad_rows(np.asarray(hf), cfg.padded_vocab).T
    raise AssertionError(kind)


def _to_hf(ours: np.ndarray, kind: str, cfg: Qwen2Config) -> np.ndarray:
    if kind == "copy":
        return ours
    if kind == "bias":
        return ours.reshape(-1)
    if kind == "T":
        return ours.T
    if kind == "proj":
        return ours.reshape(ours.shape[0], -1).T
    if kind == "o":
        return ours.reshape(-1, ours.shape[-1]).T
    if kind == "embed":
        return ours[: cfg.vocab_size]
    if kind == "lm_head":
        return ours[:, : cfg.vocab_size].T
    raise AssertionError(kind)


# ---------------------------------------------------------------- public API


def read_config(path: epath.PathLike) -> Qwen2Config:
    """The Qwen2Config of an HF checkpoint directory."""
    file = epath.Path(path) / "config.json"
    if not file.exists():
        raise InputError(f"{file}: not found (an HF checkpoint directory needs config.json)")
    try:
        d = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{file}:{e.lineno}: not valid JSON ({e.msg})") from None
    try:
        return Qwen2Config.from_hf_dict(d, where=str(file))
    except (ValueError, TypeError) as e:
        raise InputError(str(e)) from None


def _load(path, cls, dtype, compute_dtype, mesh, fill_missing=None, files: TensorFiles | None = None, **kw) -> Model:
    cfg = read_config(path)
    files = files if files is not None else TensorFiles(path)
    abstract = nnx.eval_shape(lambda: cls(cfg, rngs=nnx.Rngs(0), param_dtype=dtype, dtype=compute_dtype, **kw))

    def value(p, var):
        if fill_missing is not None:
            got = fill_missing(p, files)
            if got is not None:
                return got
        name, kind = _hf_tensor(p, cfg)
        try:
            return _to_ours(files.get(name), kind, tuple(var.get_value().shape), cfg)
        except ValueError as e:
            raise InputError(f"{path}: tensor {name!r} has shape {files.get(name).shape}, which does not fit "
                             f"config.json ({e})") from None

    return place_state(abstract, value, mesh)


def load_hf(path: epath.PathLike, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None, *,
            compute_dtype=None) -> Qwen2ForCausalLM:
    """The causal LM of an HF Qwen2 checkpoint, weights stored as `dtype` (compute in `compute_dtype`,
    default the same); with a mesh, parameters land directly in their rule-given shardings."""
    return _load(path, Qwen2ForCausalLM, dtype, compute_dtype, mesh)


def load_hf_ppm(path: epath.PathLike, dtype=jnp.float32, mesh: jax.sharding.Mesh | None = None, *,
                compute_dtype=None, head_init_std: float | None = None, head_seed: int = 0,
                head: str | None = None) -> Qwen2PPM:
    """A PPM from a PPM checkpoint (its saved head: value or log-prob) or from a policy checkpoint:
    backbone reused, and `head` (default "value") a value head drawn fresh from N(0, head_init_std)
    with `head_seed`, bias 0, or the policy's LM head ("logprob"). A `head` that contradicts a PPM
    checkpoint's own is an error."""
    cfg = read_config(path)
    std = cfg.initializer_range if head_init_std is None else head_init_std
    files = TensorFiles(path)
    saved = saved_ppm_head(path, files)
    if saved is not None and head is not None and head != saved:
        raise InputError(f"{path}: a PPM with a {saved} head, asked to load with a {head} head")
    head = saved or head or "value"

    def fill(p, files):
        if "v_head.weight" in files:
            return None
        if p == ("v_head_w",):
            return np.asarray(jax.random.normal(jax.random.key(head_seed), (cfg.hidden_size, 1), jnp.float32)) * std
        if p == ("v_head_b",):
            return np.zeros((1,), np.float32)
        return None

    return _load(path, Qwen2PPM, dtype, compute_dtype, mesh, fill_missing=fill, files=files,
                 head_init_std=head_init_std, head=head)


def saved_ppm_head(path: epath.PathLike, files: TensorFiles | None = None) -> str | None:
    """The head of the PPM saved at `path` ("value" or "logprob"), or None for a policy checkpoint;
    `files`: its tensor index when already open."""
    if "v_head.weight" in (files if files is not None else TensorFiles(path)):
        return "value"
    return json.loads((epath.Path(path) / "config.json").read_text()).get("rstar_ppm_head")


def _host(x: jax.Array) -> np.ndarray:
    if getattr(x, "is_fully_addressable", True):
        return np.asarray(jax.device_get(x))
    from jax.experimental import multihost_utils
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def save_hf(model: Model, path: epath.PathLike, *, max_shard_bytes: int = 2 ** 31) -> None:
    """Writes config.json + safetensors (sharded with an index when larger than `max_shard_bytes`).
    A policy loads with transformers' AutoModelForCausalLM; a PPM also stores its value head."""
    cfg = model.config
    out = epath.Path(path)
    tensors: dict[str, np.ndarray] = {}
    for p, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        name, kind = _hf_tensor(p, cfg)
        tensors[name] = _to_hf(_host(var.get_value()), kind, cfg)
    if jax.process_index() != 0:
        return
    hf = cfg.to_hf_dict()
    hf["torch_dtype"] = str(np.dtype(next(iter(tensors.values())).dtype)) if tensors else "float32"
    if isinstance(model, Qwen2PPM) and model.head == "value":
        hf["architectures"] = ["Qwen2ForProcessRewardModel"]
        hf["rstar_value_head"] = "v_head"
    elif isinstance(model, Qwen2PPM):  # a causal LM whose step log-probabilities are the rewards
        hf["rstar_ppm_head"] = "logprob"
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors.items():
        if shards[-1] and size + arr.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    if len(shards) == 1:
        atomic_write_bytes(out / "model.safetensors", _serialize(shards[0]))
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            atomic_write_bytes(out / fname, _serialize(shard))
            weight_map.update({k: fname for k in shard})
        total = sum(a.nbytes for a in tensors.values())
        atomic_write_text(out / INDEX, json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    atomic_write_text(out / "config.json", json.dumps(hf, indent=2))

"""Glue shared by the SFT and PPM trainers: state on the mesh, the jitted steps, summaries, the CLI stage."""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rstar_jax import sharding
from rstar_jax.data import pipeline
from rstar_jax.train import optim, trainer


@dataclasses.dataclass
class Setup:
    """A model ready to train: its state on the mesh, the jitted train/eval steps and each step's rate."""

    state: trainer.TrainState
    train_step: Callable
    eval_step: Callable
    micro_rows: int
    learning_rates: np.ndarray


def batch_shards(mesh: jax.sharding.Mesh | None) -> int:
    """How many ways the batch dimension is split (data x fsdp, by the logical rules)."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in sharding.RULES[sharding.BATCH])


def accumulation(batch_size: int, micro_batch_size: int, mesh) -> tuple[int, int]:
    """(accumulation steps, rows per microbatch); checks that rows split over processes and shards."""
    micro = micro_batch_size or batch_size
    if batch_size % micro:
        raise ValueError(f"batch_size={batch_size} is not a multiple of micro_batch_size={micro}")
    shards = batch_shards(mesh)
    if micro % shards or micro % jax.process_count():
        raise ValueError(f"microbatch of {micro} rows does not split over {shards} batch shards "
                         f"and {jax.process_count()} processes; pick a multiple of both")
    return batch_size // micro, micro


def data_shard(mesh: jax.sharding.Mesh | None) -> pipeline.Shard:
    """Which block of every global batch this process feeds, read off the batch sharding itself, so any
    device order (and tensor groups spanning processes) works."""
    if mesh is None:
        return pipeline.Shard()
    n = batch_shards(mesh)
    index_map = trainer.batch_sharding(mesh).addressable_devices_indices_map((n,))
    rows = sorted({idx[0].indices(n)[0] for idx in index_map.values()})
    if rows != list(range(rows[0], rows[0] + len(rows))) or n % len(rows) or rows[0] % len(rows):
        raise ValueError(f"process {jax.process_index()} holds batch shards {rows} of {n}: not one aligned block")
    return pipeline.Shard(rows[0] // len(rows), n // len(rows))


def setup_training(model: nnx.Module, loss_fn: trainer.LossFn, cfg, num_steps: int,
                   mesh: jax.sharding.Mesh | None) -> Setup:
    """Splits `model`, places it (and a fresh AdamW state) on `mesh`, and finds or jits the steps (with donation)."""
    accum, micro = accumulation(cfg.batch_size, cfg.micro_batch_size, mesh)
    optimizer = optim.make_optimizer(cfg)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    shardings = None
    if mesh is None:
        opt_state = optimizer.init(params)
    else:
        param_sh, rest_sh = sharding.state_shardings(params, mesh), sharding.state_shardings(rest, mesh)
        params, rest = jax.device_put(params, param_sh), jax.device_put(rest, rest_sh)
        shardings = (param_sh, trainer.opt_state_shardings(optimizer, params, param_sh, mesh), rest_sh)
        opt_state = jax.jit(optimizer.init, out_shardings=shardings[1])(params)
    key = (graphdef, loss_fn, optimizer, accum, mesh)
    if key not in _STEPS:  # the shardings follow from the key, so this stage's serve every later one
        _STEPS[key] = _jit_steps(graphdef, loss_fn, optimizer, accum, mesh, shardings)
    train_step, eval_step = _STEPS[key]
    state = trainer.TrainState(graphdef, params, rest, opt_state, 0)
    return Setup(state, _log_first_call(train_step, "train step"), _log_first_call(eval_step, "eval step"), micro,
                 optim.learning_rates(cfg, num_steps))


# Jitted (train, eval) steps by (graphdef, loss_fn, optimizer, accum, mesh): later stages of a process (the
# rounds, the control) reuse the compiled programs of earlier ones.
_STEPS: dict[tuple, tuple[Callable, Callable]] = {}


def _jit_steps(graphdef, loss_fn: trainer.LossFn, optimizer, accum: int, mesh,
               shardings: tuple | None) -> tuple[Callable, Callable]:
    """The jitted (train, eval) steps; on a mesh, `shardings` = (params, optimizer state, rest)."""
    step = trainer.make_train_step(graphdef, loss_fn, optimizer, accum)
    eval_step = trainer.make_eval_step(graphdef, loss_fn)
    if mesh is None:
        return jax.jit(step, donate_argnums=(0, 1)), jax.jit(eval_step)
    param_sh, opt_sh, rest_sh = shardings
    batch_sh = trainer.batch_sharding(mesh)
    replicated = NamedSharding(mesh, P())
    train_jit = jax.jit(step, donate_argnums=(0, 1), in_shardings=(param_sh, opt_sh, rest_sh, batch_sh, replicated),
                        out_shardings=(param_sh, opt_sh, replicated))
    eval_jit = jax.jit(eval_step, in_shardings=(param_sh, rest_sh, batch_sh), out_shardings=replicated)
    return train_jit, eval_jit


def _log_first_call(fn: Callable, name: str) -> Callable:
    """Wraps a jitted function to log how long its first call (trace + compile + run) took."""
    first = [True]

    def call(*args):
        if not first[0]:
            return fn(*args)
        t0 = time.perf_counter()
        out = jax.block_until_ready(fn(*args))
        first[0] = False
        logging.info("%s: first call %.1fs (with its compile, unless an earlier stage compiled it)", name,
                     time.perf_counter() - t0)
        return out

    return call


def capped_steps(cfg, num_steps: int) -> int:
    """The data's `num_steps`, or `cfg.max_steps` when that is set and smaller (the schedule spans the result)."""
    return min(num_steps, cfg.max_steps) if cfg.get("max_steps", 0) > 0 else num_steps


def loop_config(cfg, num_steps: int, desc: str) -> trainer.LoopConfig:
    return trainer.LoopConfig(num_steps=num_steps, log_every=cfg.log_every, eval_every=cfg.eval_every,
                              checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                              desc=desc)


def summarize(history: list[dict[str, float]], eval_metrics: dict[str, float], wall_s: float) -> dict:
    """The numbers a stage reports: steps, first/final train loss, eval metrics, tokens/s, wall time."""
    summary: dict[str, Any] = {"steps": len(history), "wall_s": round(wall_s, 2)}
    if history:
        summary["first_loss"] = history[0]["loss"]
        summary["final_loss"] = history[-1]["loss"]
    summary.update({f"eval_{k}": v for k, v in eval_metrics.items()})
    return summary


def run_stage(config, workdir: str, *, kind: str, train: Callable) -> dict:
    """Command-line glue of both stages: mesh, tokenizer and model from `config`, train, export to HF.

    `kind` is "policy" (causal LM) or "ppm" (the checkpoint's backbone; from a policy checkpoint, a
    fresh value head or the LM head as `config.ppm_train.head` says). Weights are stored as `config.model.param_dtype` and computed in
    `config.model.dtype`. `train(model, tokenizer, mesh) -> (model, summary)` does the work.
    """
    from rstar_jax import models
    from rstar_jax.tokenizer import StepTokenizer

    if not config.init_checkpoint:
        raise ValueError("config.init_checkpoint is required: an HF directory (config.json + safetensors)")
    t0 = time.perf_counter()
    out = epath.Path(workdir)
    mesh = sharding.make_mesh(dict(config.mesh))
    tokenizer = StepTokenizer.from_file(config.tokenizer or config.init_checkpoint)
    dtypes = {"dtype": config.model.param_dtype, "compute_dtype": config.model.dtype, "mesh": mesh}
    with jax.set_mesh(mesh):
        if kind == "policy":
            model = models.load_hf(config.init_checkpoint, **dtypes)
        else:
            model = models.load_hf_ppm(config.init_checkpoint, head_init_std=config.ppm_train.head_init_std,
                                       head_seed=config.ppm_train.head_seed, head=config.ppm_train.head, **dtypes)
        if tokenizer.vocab_size > model.config.vocab_size:  # room for added step tokens
            model = models.resize_vocab(model, tokenizer.vocab_size)
        model, summary = train(model, tokenizer, mesh)
        export = out / "export"
        models.save_hf(model, export)
    if jax.process_index() == 0:
        tokenizer.save(export)
    summary.update({"export": str(export), "stage_wall_s": round(time.perf_counter() - t0, 2)})
    trainer.write_summary(out, summary)
    return summary

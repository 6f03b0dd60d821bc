"""The shared training core of the SFT and PPM trainers: jitted step, checkpoints, eval, metrics, loop.

A trainer supplies a loss function `loss_fn(model, batch) -> (loss_sum, weight_sum, sums)` that
returns sums, never means, so that gradient accumulation, any mesh and any number of processes
all divide the same totals: the step's loss is sum(loss_sum) / sum(weight_sum) over the global batch.
The model lives as nnx state split into parameters (the trained master copy, in the model's
`param_dtype`, e.g. fp32) and the rest; the model computes in its own `dtype` (e.g. bf16), so
gradients and AdamW updates stay in the master precision.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from rstar_jax import sharding
from rstar_jax.io import atomic_write_text
from rstar_jax.train import optim

LossFn = Callable[[nnx.Module, dict[str, jax.Array]], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


@dataclasses.dataclass
class TrainState:
    """Everything a step reads and writes; `step` counts finished optimizer steps."""

    graphdef: Any
    params: Any
    rest: Any
    opt_state: Any
    step: int = 0

    def model(self) -> nnx.Module:
        return nnx.merge(self.graphdef, self.params, self.rest)


def microbatches(batch: dict[str, jax.Array], accum: int) -> dict[str, jax.Array]:
    """[B, ...] -> [accum, B/accum, ...] with microbatch k = rows k, k+accum, ...; every microbatch
    then spans all batch shards, so no rows move between devices."""
    return jax.tree.map(lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1), batch)


def summed_grads(graphdef, loss_fn: LossFn, params, rest, batch, accum: int):
    """Gradients of sum(loss_sum), plus the loss/weight/aux sums, over `accum` microbatches (lax.scan)."""

    def micro(p, mb):
        loss_sum, weight_sum, sums = loss_fn(nnx.merge(graphdef, p, rest), mb)
        return loss_sum, (weight_sum, sums)

    grad_fn = jax.value_and_grad(micro, has_aux=True)
    if accum == 1:
        (loss_sum, (weight_sum, sums)), grads = grad_fn(params, batch)
        return grads, loss_sum, weight_sum, sums

    def body(carry, mb):
        (loss_sum, (weight_sum, sums)), grads = grad_fn(params, mb)
        return jax.tree.map(jnp.add, carry, (grads, loss_sum, weight_sum, sums)), None

    (l0, (w0, s0)), g0 = jax.eval_shape(grad_fn, params, jax.tree.map(lambda x: x[0], microbatches(batch, accum)))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (g0, l0, w0, s0))
    (grads, loss_sum, weight_sum, sums), _ = jax.lax.scan(body, zeros, microbatches(batch, accum))
    return grads, loss_sum, weight_sum, sums


def make_train_step(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation, accum: int) -> Callable:
    """The pure step (params, opt_state, rest, batch, learning_rate) -> (params, opt_state, metrics);
    `optimizer` comes from `optim.make_optimizer`, whose rate is this step's input."""

    def step(params, opt_state, rest, batch, learning_rate):
        grads, loss_sum, weight_sum, sums = summed_grads(graphdef, loss_fn, params, rest, batch, accum)
        denom = jnp.where(weight_sum > 0, weight_sum, 1.0)
        grads = jax.tree.map(lambda g: g / denom.astype(g.dtype), grads)
        opt_state = optim.with_learning_rate(opt_state, learning_rate)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        metrics = {"loss": loss_sum / denom, "grad_norm": optax.global_norm(grads), "lr": learning_rate,
                   "weight": weight_sum, **sums}
        return params, opt_state, metrics

    return step


def make_eval_step(graphdef, loss_fn: LossFn) -> Callable:
    """(params, rest, batch) -> the loss, weight and aux sums of one batch (forward only)."""

    def step(params, rest, batch):
        loss_sum, weight_sum, sums = loss_fn(nnx.merge(graphdef, params, rest), batch)
        return {"loss_sum": loss_sum, "weight": weight_sum, **sums}

    return step


# ----------------------------------------------------------------------------------------------
# sharding


def batch_sharding(mesh: jax.sharding.Mesh | None) -> NamedSharding | None:
    """Rows split over the mesh axes the logical rules give the batch (data, fsdp); replicated along tensor."""
    return None if mesh is None else NamedSharding(mesh, P(sharding.RULES[sharding.BATCH]))


def to_global(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh | None) -> dict[str, jax.Array]:
    """This process's rows -> global arrays on the mesh (or plain device arrays without one)."""
    if mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    rows = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(rows, v) for k, v in batch.items()}


def opt_state_shardings(optimizer: optax.GradientTransformation, params: Any, param_shardings: Any,
                        mesh: jax.sharding.Mesh) -> Any:
    """Moment buffers follow their parameter's sharding; counters and scalars are replicated."""
    abstract = jax.eval_shape(optimizer.init, params)
    replicated = NamedSharding(mesh, P())
    return optax.tree_map_params(optimizer, lambda _, s: s, abstract, param_shardings,
                                 transform_non_params=lambda _: replicated)


# ----------------------------------------------------------------------------------------------
# checkpoints


class Checkpoints:
    """Orbax manager over `directory`: parameters, optimizer state and the data iterator position."""

    def __init__(self, directory: epath.PathLike, keep: int):
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(epath.Path(directory), options=options,
                                             item_names=("params", "opt_state", "data"))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            params=ocp.args.StandardSave(state.params), opt_state=ocp.args.StandardSave(state.opt_state),
            data=ocp.args.JsonSave(data_state)))

    def restore(self, step: int, state: TrainState) -> tuple[TrainState, dict]:
        """State at `step`, laid out like `state` (same shardings); also the saved data position."""
        abstract = lambda tree: jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)  # noqa: E731
        got = self.manager.restore(step, args=ocp.args.Composite(
            params=ocp.args.StandardRestore(abstract(state.params)),
            opt_state=ocp.args.StandardRestore(abstract(state.opt_state)), data=ocp.args.JsonRestore()))
        return dataclasses.replace(state, params=got.params, opt_state=got.opt_state, step=step), got.data

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# ----------------------------------------------------------------------------------------------
# metrics


class MetricsSink:
    """TensorBoard event files (process 0) plus `metrics.jsonl` lines and the absl log.

    A resumed run keeps the earlier run's lines up to the step it resumed from."""

    def __init__(self, workdir: epath.Path, prefix: str, start_step: int):
        self.prefix = prefix
        self.lead = jax.process_index() == 0
        self.writer = None
        self.path = workdir / "metrics.jsonl"
        self.lines: list[str] = []
        if self.lead and self.path.exists():
            self.lines = [line for line in self.path.read_text().splitlines()
                          if line.strip() and json.loads(line)["step"] <= start_step]
        if self.lead:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(logdir=str(workdir / "tensorboard"))

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not self.lead:
            return
        for k, v in metrics.items():
            self.writer.add_scalar(f"{self.prefix}/{k}", v, step)
        self.lines.append(json.dumps({"step": step, **metrics}))
        logging.info("%s step %d: %s", self.prefix, step, " ".join(f"{k}={v:.5g}" for k, v in metrics.items()))

    def close(self) -> None:
        if self.lead:
            self.writer.close()
            atomic_write_text(self.path, "".join(line + "\n" for line in self.lines))


# ----------------------------------------------------------------------------------------------
# the loop


@dataclasses.dataclass
class LoopConfig:
    """What the loop needs from a train config section."""

    num_steps: int
    log_every: int
    eval_every: int
    checkpoint_every: int
    keep_checkpoints: int
    desc: str


def fit(state: TrainState, *, step_fn: Callable, learning_rates: np.ndarray, data: Callable[[], Iterator],
        mesh: jax.sharding.Mesh | None, loop: LoopConfig, workdir: epath.Path,
        eval_fn: Callable[[TrainState], dict[str, float]] | None = None,
        on_step: Callable[[int, dict], None] | None = None
        ) -> tuple[TrainState, list[dict[str, float]], dict[str, float]]:
    """Runs `step_fn` from the latest checkpoint in `workdir/checkpoints` (if any) to `loop.num_steps`,
    step k at `learning_rates[k]`.

    `data()` returns a fresh grain iterator over this process's batches; its position is saved with
    every checkpoint and restored on resume, so an interrupted run continues on exactly the batches
    it would have seen. Metrics are fetched from the device only every `log_every` steps, so the
    host prepares the next batches while the device still runs the previous steps.
    Returns the final state, every step's metrics (floats) and the last held-out metrics.
    """
    ckpt = Checkpoints(workdir / "checkpoints", loop.keep_checkpoints)
    it = data()
    if (latest := ckpt.latest_step()) is not None:
        state, data_state = ckpt.restore(latest, state)
        if data_state.get("num_steps") != loop.num_steps:
            raise ValueError(f"{workdir}/checkpoints: step {latest} belongs to a run of {data_state.get('num_steps')} "
                             f"steps, this one has {loop.num_steps} (other data or batch size?); use a fresh workdir")
        it.set_state(data_state["iterator"])
        logging.info("%s: resumed from step %d", loop.desc, latest)
    sink = MetricsSink(workdir, loop.desc, state.step)
    history: list[dict[str, float]] = []
    last_eval: dict[str, float] = {}
    pending: list[dict[str, jax.Array]] = []
    bar = tqdm(total=loop.num_steps, initial=state.step, desc=loop.desc, unit="step",
               disable=jax.process_index() != 0)
    clock = time.perf_counter()
    try:
        while state.step < loop.num_steps:
            batch = to_global(next(it), mesh)
            params, opt_state, metrics = step_fn(state.params, state.opt_state, state.rest, batch,
                                             learning_rates[state.step])
            state = dataclasses.replace(state, params=params, opt_state=opt_state, step=state.step + 1)
            pending.append(metrics)
            last = state.step == loop.num_steps
            if last or state.step % loop.log_every == 0:
                fetched = [{k: float(v) for k, v in m.items()} for m in jax.device_get(pending)]
                pending = []
                history.extend(fetched)
                now = time.perf_counter()
                tokens = sum(m.get("tokens", 0.0) for m in fetched)
                rate = tokens / max(now - clock, 1e-9)
                clock = now
                bar.update(len(fetched))
                bar.set_postfix(loss=f"{fetched[-1]['loss']:.4f}", tok_s=f"{rate:,.0f}")
                sink.write(state.step, {**fetched[-1], "tokens_per_s": rate})
            if eval_fn is not None and (last or (loop.eval_every and state.step % loop.eval_every == 0)):
                last_eval = eval_fn(state)
                sink.write(state.step, {f"eval_{k}": v for k, v in last_eval.items()})
                clock = time.perf_counter()  # eval time is not training throughput
            if last or state.step % loop.checkpoint_every == 0:
                ckpt.save(state.step, state, {"iterator": it.get_state(), "num_steps": loop.num_steps})
            if on_step is not None:
                on_step(state.step, metrics)
    finally:
        bar.close()
        ckpt.close()
        sink.close()
    return state, history, last_eval


def evaluate(eval_step: Callable, state: TrainState, batches: Iterator, mesh) -> dict[str, float]:
    """Totals of `eval_step`'s sums over `batches` (the caller turns them into means)."""
    totals: dict[str, float] = {}
    for batch in batches:
        for k, v in jax.device_get(eval_step(state.params, state.rest, to_global(batch, mesh))).items():
            totals[k] = totals.get(k, 0.0) + float(v)
    return totals


def write_summary(workdir: epath.Path, summary: dict) -> None:
    """`workdir/summary.json` (process 0), the stage's key numbers."""
    if jax.process_index() == 0:
        atomic_write_text(workdir / "summary.json", json.dumps(summary, indent=2, sort_keys=True, default=str))

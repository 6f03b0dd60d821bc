"""AdamW with warmup and a linear/cosine/constant decay, clipped by global norm (all from the train config).

The learning rate is an input of the optimizer (`optax.inject_hyperparams`), not a constant of its
program: every stage with the same AdamW settings, model and shapes reuses one compiled train step,
whatever its peak rate and length (a baked-in schedule cost one compile per stage).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

SCHEDULES = ("cosine", "linear", "constant")


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warmup over `warmup_ratio` of the steps to `learning_rate`, then `schedule` down to
    `learning_rate * end_lr_ratio` at `total_steps`."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {cfg.schedule!r}")
    peak = cfg.learning_rate
    warmup = min(int(round(cfg.warmup_ratio * total_steps)), max(total_steps - 1, 0))
    decay = max(total_steps - warmup, 1)
    end = peak * cfg.end_lr_ratio
    warm = optax.linear_schedule(0.0, peak, max(warmup, 1))  # unused when warmup == 0
    if cfg.schedule == "cosine":
        tail = optax.cosine_decay_schedule(peak, decay, alpha=cfg.end_lr_ratio)
    elif cfg.schedule == "linear":
        tail = optax.linear_schedule(peak, end, decay)
    else:
        tail = optax.constant_schedule(peak)
    return optax.join_schedules([warm, tail], [warmup])


def learning_rates(cfg, total_steps: int) -> np.ndarray:
    """The schedule's float32 rate for every step in [0, total_steps), from the int32 step count: bit for bit
    what the schedule gave when it ran inside the train step (checked on the demo's stages)."""
    schedule = jax.jit(jax.vmap(learning_rate_schedule(cfg, total_steps)))
    return np.asarray(schedule(np.arange(total_steps, dtype=np.int32)), np.float32)


def make_optimizer(cfg) -> optax.GradientTransformation:
    """Gradient clipping (when `max_grad_norm` > 0) followed by AdamW whose rate the train step sets
    each step; equal settings give the same object, so a jitted step built on it is found again."""
    return _adamw(float(cfg.adam_b1), float(cfg.adam_b2), float(cfg.adam_eps), float(cfg.weight_decay),
                  float(cfg.max_grad_norm))


@functools.cache
def _adamw(b1: float, b2: float, eps: float, weight_decay: float, max_grad_norm: float) -> optax.GradientTransformation:
    def chain(learning_rate):
        adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
        return optax.chain(optax.clip_by_global_norm(max_grad_norm), adamw) if max_grad_norm > 0 else adamw

    return optax.inject_hyperparams(chain)(learning_rate=jnp.zeros((), jnp.float32))


def with_learning_rate(opt_state: optax.OptState, learning_rate: jax.Array) -> optax.OptState:
    """`opt_state` (of `make_optimizer`) set to update at `learning_rate`."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": learning_rate})

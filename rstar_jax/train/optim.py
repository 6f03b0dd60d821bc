"""AdamW with warmup and a linear/cosine/constant decay, clipped by global norm (all from the train config)."""
from __future__ import annotations

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


def make_optimizer(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Gradient clipping (when `max_grad_norm` > 0) followed by AdamW on the schedule above."""
    schedule = learning_rate_schedule(cfg, total_steps)
    adamw = optax.adamw(schedule, b1=cfg.adam_b1, b2=cfg.adam_b2, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if cfg.max_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(cfg.max_grad_norm), adamw), schedule
    return adamw, schedule

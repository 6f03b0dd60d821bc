"""The self-evolution round loop as resumable stages.

Each stage owns a directory under the workdir and ends by writing `DONE.json` (its summary)
atomically. A stage with `DONE.json` is never redone; a stage without it is run again from its start
(stages that checkpoint internally, such as search shards and trainers, pick up their own progress).
Stages read only other stages' finished outputs, so a run killed at any moment (even `kill -9`)
continues where it stopped when the same command is run again.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from absl import logging
from etils import epath

from rstar_jax.io import atomic_write_text

DONE = "DONE.json"


def stage_done(workdir: epath.Path, name: str) -> dict[str, Any] | None:
    """The summary of a finished stage, or None when it has not finished."""
    path = workdir / name / DONE
    return json.loads(path.read_text()) if path.exists() else None


def run_stage(workdir: epath.Path, name: str, fn: Callable[[epath.Path], dict[str, Any]]) -> dict[str, Any]:
    """Runs `fn(stage_dir)` unless the stage already finished; records its summary and wall time."""
    summary = stage_done(workdir, name)
    if summary is not None:
        logging.info("stage %s: already done, skipped", name)
        return summary
    stage_dir = workdir / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    logging.info("stage %s: starting", name)
    start = time.time()
    summary = dict(fn(stage_dir))
    summary["seconds"] = round(time.time() - start, 2)
    atomic_write_text(stage_dir / DONE, json.dumps(summary, indent=2, sort_keys=True, default=str))
    logging.info("stage %s: done in %.1fs", name, summary["seconds"])
    return summary

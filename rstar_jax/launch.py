"""Entry point: `python -m rstar_jax.launch --config=NAME [--config.a.b=value ...] [--workdir=DIR]`.

NAME is a file in configs/ (without .py) or a path to a config file. The config's `stage` picks
what runs (see STAGES); `--dry_run` (and the `show` stage) only validate and print the resolved config.
On a pod every host runs the same command with `--distributed`.
"""
from __future__ import annotations

import difflib
import importlib
import importlib.util
import json
import os
import sys
from collections.abc import Sequence

from absl import app, flags, logging
from ml_collections import config_flags

import configs as _configs_pkg

CONFIG_DIR = os.path.dirname(os.path.abspath(_configs_pkg.__file__))
# stage name -> module whose `run(config, workdir) -> dict` carries it out.
STAGES = {
    "sft": "rstar_jax.train.sft",
    "ppm": "rstar_jax.train.ppm",
    "evolve": "rstar_jax.evolve",
    "eval": "rstar_jax.evaluate",
}

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config name in configs/ or a path to a config .py file.")
_WORKDIR = flags.DEFINE_string("workdir", "runs/default", "Directory (local or gs://) for every artifact of the run.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Validate and print the resolved config, then exit.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")


def available_configs() -> list[str]:
    """Names accepted by --config (files in configs/ other than base and helpers)."""
    return sorted(
        f[:-3] for f in os.listdir(CONFIG_DIR) if f.endswith(".py") and not f.startswith("_") and f != "base.py"
    )


def resolve_config_arg(argv: list[str]) -> list[str]:
    """Rewrites `--config=NAME` into the path of configs/NAME.py and checks every `--config.x.y` override.

    Unknown names exit listing the known ones; an override naming no field exits naming the closest one.
    """
    out = list(argv)
    path = None
    for i, arg in enumerate(out):
        if arg == "--config" and i + 1 < len(out):
            out[i + 1] = path = _resolve_name(out[i + 1])
        elif arg.startswith("--config="):
            path = _resolve_name(arg[len("--config="):])
            out[i] = "--config=" + path
    overrides = [a[len("--config."):].split("=", 1)[0] for a in out if a.startswith("--config.")]
    if path is not None and overrides:
        file, _, arg = path.partition(":")
        config = load_config_file(file, arg or None)
        for key in overrides:
            _check_override(config, key)
    return out


def load_config_file(path: str, arg: str | None = None):
    """Imports a config file and returns its `get_config()` (with `arg` when the path had `:arg`)."""
    spec = importlib.util.spec_from_file_location(f"_rstar_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def _check_override(config, key: str) -> None:
    node = config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        fields = list(node.keys()) if hasattr(node, "keys") else []
        if part not in fields:
            where = "config" + "".join("." + p for p in parts[:depth])
            close = difflib.get_close_matches(part, fields, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f"; it has: {', '.join(sorted(fields))}"
            sys.exit(f"error: bad override --config.{key}: {where} has no field {part!r}{hint}")
        node = node[part]


def _resolve_name(value: str) -> str:
    name, sep, extra = value.partition(":")  # config_flags passes "path:arg" through to get_config(arg)
    if os.path.isfile(name):
        return value
    candidate = os.path.join(CONFIG_DIR, name + ".py")
    if os.path.isfile(candidate):
        return candidate + sep + extra
    sys.exit(f"error: unknown config {name!r}. Available configs: {', '.join(available_configs())} "
             "(or give a path to a config file)")


def init_distributed() -> None:
    """jax.distributed.initialize(); TPU VMs and SLURM/MPI hosts auto-detect, others set the env below.

    JAX_COORDINATOR_ADDRESS (host:port of process 0) is read by JAX itself; JAX_NUM_PROCESSES and
    JAX_PROCESS_ID are our launchers' way of passing the other two.
    """
    import jax

    kwargs = {}
    for env, key in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
        if os.environ.get(env):
            kwargs[key] = int(os.environ[env])
    jax.distributed.initialize(**kwargs)
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(), jax.process_count(),
                 jax.local_device_count(), jax.device_count())


def enable_compile_cache(directory: str) -> None:
    """Points JAX's persistent compilation cache at `directory` (~ expanded; "" leaves it off). Programs
    that took at least half a second to compile are stored; past 4 GiB the least recently used go."""
    if not directory:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_compilation_cache_max_size", 4 * 2 ** 30)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        raise app.UsageError(f"--config is required; available: {', '.join(available_configs())}")
    if _DISTRIBUTED.value:
        init_distributed()
    stage = config.get("stage", "show")
    if _DRY_RUN.value or stage == "show":
        print(config.to_json_best_effort(indent=2, sort_keys=True))
        return
    if stage not in STAGES:
        raise app.UsageError(f"config.stage={stage!r} is not one of {sorted(STAGES)} (or 'show')")
    enable_compile_cache(config.get("compile_cache", ""))
    module = importlib.import_module(STAGES[stage])
    logging.info("stage %s -> %s, workdir %s", stage, STAGES[stage], _WORKDIR.value)
    summary = module.run(config, _WORKDIR.value)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str))


def run_main() -> None:
    """Console entry: resolve config names, then hand over to absl."""
    app.run(main, argv=resolve_config_arg(sys.argv))


if __name__ == "__main__":
    run_main()

import json
import os
import subprocess
import sys

import pytest

from rstar_jax import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(*args):
    return subprocess.run(
        [sys.executable, "-m", "rstar_jax.launch", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("name", launch.available_configs() + ["base"])
def test_every_config_loads_with_a_known_stage(name):
    config = launch.load_config_file(os.path.join(launch.CONFIG_DIR, name + ".py"))
    assert config.stage in set(launch.STAGES) | {"show"}
    assert config.mcts.c_puct > 0


def test_override_applies_and_prints_resolved_config():
    r = _launch("--config=base", "--dry_run", "--config.mcts.rollouts=32", "--config.train.learning_rate=0.001")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert printed["mcts"]["rollouts"] == 32
    assert printed["train"]["learning_rate"] == 0.001


def test_unknown_config_lists_names():
    r = _launch("--config=no_such_config")
    assert r.returncode != 0
    assert "unknown config 'no_such_config'" in r.stderr
    for name in launch.available_configs():
        assert name in r.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.mcts.rollotus=3", "config.mcts has no field 'rollotus' (did you mean 'rollouts'?)"),
        ("--config.nothing.here=3", "config has no field 'nothing'"),
        ("--config.mcts.rollouts=abc", "--config.mcts.rollouts=abc"),
    ],
)
def test_bad_override_errors_name_the_field(override, message):
    r = _launch("--config=base", "--dry_run", override)
    assert r.returncode != 0
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_config_path_is_accepted():
    r = _launch(f"--config={os.path.join(ROOT, 'configs', 'base.py')}", "--dry_run")
    assert r.returncode == 0, r.stderr


def test_distributed_two_processes_on_loopback():
    import portpicker

    port = portpicker.pick_unused_port()
    procs = []
    for pid in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                   JAX_PROCESS_ID=str(pid), XLA_FLAGS="--xla_force_host_platform_device_count=2")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "rstar_jax.launch", "--distributed", "--config=base", "--dry_run",
             "--alsologtostderr"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "2 local / 4 global devices" in err
        assert json.loads(out)["mcts"]["c_puct"] == 2.0


def test_compile_cache_stores_programs_across_processes(tmp_path):
    """A second process finds the first one's compiled program on disk instead of compiling it."""
    script = ("import sys, jax, jax.numpy as jnp; from rstar_jax import launch; "
              "launch.enable_compile_cache(sys.argv[1]); jax.config.update('jax_persistent_cache_min_compile_time_secs', 0); "
              "print(float(jax.jit(lambda x: jnp.tanh(x) * 3)(jnp.float32(0.5))))")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    run = lambda: subprocess.run([sys.executable, "-c", script, str(tmp_path / "xla")], cwd=ROOT, env=env,
                                 capture_output=True, text=True, timeout=120)
    first = run()
    assert first.returncode == 0, first.stderr
    programs = lambda: {p.name: p.stat().st_mtime_ns for p in (tmp_path / "xla").glob("*-cache")}
    stored = programs()
    assert any("jit__lambda" in name for name in stored)
    second = run()
    assert second.returncode == 0 and second.stdout == first.stdout
    assert programs() == stored  # loaded: a compile would have written its program again

"""End to end: the demo_smoke loop through the real launcher, uninterrupted and killed (-9) at several points."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(cache_dir):
    # One persistent compilation cache for all runs of this module: reruns skip XLA compiles.
    return dict(os.environ, JAX_COMPILATION_CACHE_DIR=str(cache_dir), XLA_FLAGS="")


def _cmd(workdir):
    return [sys.executable, "-m", "rstar_jax.launch", "--config=demo_smoke", f"--workdir={workdir}"]


def _lines(path):
    return path.read_text().splitlines()


def _strip_times(report):
    for r in report["rounds"]:
        r.pop("seconds", None)
    return report


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("jax_cache")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    wd = tmp_path_factory.mktemp("uninterrupted")
    r = subprocess.run(_cmd(wd), cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    return wd, r


def test_demo_smoke_runs_the_whole_loop(reference, cache_dir):
    wd, r = reference
    report = json.loads((wd / "report.json").read_text())
    assert [x["round"] for x in report["rounds"]] == [0, 1, 2, 3, 4]
    assert (wd / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "greedy" in report["control"]["heldout"]
    for r_ in report["rounds"]:
        assert 0.0 <= r_["heldout"]["greedy"] <= 1.0
        assert set(r_["heldout"]["by_level"]) <= {"1", "2", "3", "4", "5", "6"}
    final = report["rounds"][-1]
    assert final["heldout"]["mcts_ppm"] is not None and final["search"]["problems"] == 6
    for stage in ("world", "round_0/policy", "round_4/search", "round_2/ppm", "round_4/ppm", "control/eval"):
        assert (wd / stage / "DONE.json").exists(), stage
    assert not (wd / "round_1/ppm").exists()  # round 2 searches terminal-guided: nothing reads a round-1 PPM
    steps = lambda stage: json.loads((wd / stage / "DONE.json").read_text())["steps"]  # noqa: E731
    assert steps("control/policy") == steps("round_4/policy")  # the control's training compute is the round's
    # sampled metrics for the base and the last round only
    assert [r_["heldout"]["majority"] is not None for r_ in report["rounds"]] == [True, False, False, False, True]
    assert (wd / "round_4/policy/export/config.json").exists()
    assert report["equal_budget"]["problems"] == 4  # eval.equal_budget_problems of the 6 held-out
    # accumulate_data: round 2 trains on rounds 1 and 2's selections, each example once
    r1, r2 = _lines(wd / "round_1/select/sft_round.jsonl"), _lines(wd / "round_2/select/sft_round.jsonl")
    both = _lines(wd / "round_2/select/sft.jsonl")
    assert set(r1) | set(r2) <= set(both) and len(set(both)) == len(both)
    assert "round" in r.stdout and "control" in r.stdout  # the printed table
    # A finished run, started again, redoes nothing.
    again = subprocess.run(_cmd(wd), cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    assert "starting" not in again.stderr and "already done" in again.stderr


@pytest.mark.slow
@pytest.mark.parametrize("marker, delay", [
    ("stage round_0/policy: starting", 1.5),  # inside training (base pretraining)
    ("stage round_1/search: starting", 0.5),  # inside search (the stage takes ~1.5 s here)
    ("stage round_1/select: done", 0.0),  # between stages
    ("stage round_4/eval: starting", 1.0),  # inside the last evaluation (MCTS + PPM, equal budget)
])
def test_killed_run_resumes_to_the_same_report(reference, tmp_path, cache_dir, marker, delay):
    ref_wd, _ = reference
    wd = tmp_path / "run"
    proc = subprocess.Popen(_cmd(wd), cwd=ROOT, env=_env(cache_dir), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 900
    for line in proc.stderr:  # kill -9 (the whole process group: sandbox workers too) at the marker
        if marker in line:
            time.sleep(delay)
            os.killpg(proc.pid, signal.SIGKILL)
            break
        assert time.time() < deadline
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before {marker!r}"
    stage = marker.split()[1].rstrip(":")
    if marker.endswith("starting"):
        assert not (wd / stage / "DONE.json").exists(), "the kill came after the stage had finished"
    r = subprocess.run(_cmd(wd), cwd=ROOT, env=_env(cache_dir), capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr[-3000:]
    got = _strip_times(json.loads((wd / "report.json").read_text()))
    want = _strip_times(json.loads((ref_wd / "report.json").read_text()))
    assert got == want

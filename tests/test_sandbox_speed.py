"""Sandbox tests for the mechanisms that make the pool fast: each must keep every program's fresh, isolated state."""
from __future__ import annotations

import os
import signal
import time

import pytest

from procs import alive, children
from rstar_jax.sandbox import Sandbox


@pytest.fixture(scope="module", params=["os_layers", "deny_layer"])
def sb(request):
    forced = {"namespaces": False, "drop_privileges": False} if request.param == "deny_layer" else {}
    with Sandbox(workers=1, timeout_s=2.0, memory_mb=256, **forced) as pool:
        yield pool


def test_worker_stays_lean(sb):
    # threading (and what imports it) doubles every fork's cost, and the rest here add ~2 MB that every fork
    # copies and every exit unmaps; the program's own imports are its business
    heavy = ('threading', 'logging', 'subprocess', 'queue', 'dataclasses', 'tempfile', 'shutil', 'site')
    probe = f"import sys\nprint(sorted(m for m in {heavy!r} if m in sys.modules))"
    assert sb.run(probe).stdout == "[]\n"
    assert sb.run("import threading\nprint(threading.active_count())").stdout == "1\n"


def test_std_streams_fresh_in_every_program(sb):
    # the streams are built once in the worker; each child must start from an unused copy of them
    dirty = ["import sys, os\nsys.stdout.write('left in the buffer')\nsys.stderr.write('err')\nos._exit(0)",
             "import sys\nsys.stdout.close()\nsys.stderr.close()",
             "import sys\nsys.stdout.write = None\nsys.stdin = None",
             "import sys\nsys.stdout.reconfigure(line_buffering=True, errors='strict')\nprint('x')"]
    for code in dirty:
        sb.run(code)
        r = sb.run("import sys\nprint('clean', sys.stdout.line_buffering, sys.stdout.errors, sys.stdin.read())\n"
                   "print('e', file=sys.stderr)")
        assert (r.stdout, r.stderr, r.error) == ("clean False backslashreplace \n", "e\n", None), (code, r)


def test_programs_see_site_packages_and_exit_builtins(sb):
    # the worker skips `site` (-S) but adds what a program needs of it
    r = sb.run("from absl import flags\nprint(flags.__name__)\nexit(4)")   # a site-packages module not preloaded
    assert (r.stdout, r.error) == ("absl.flags\n", "SystemExit: 4"), r
    assert sb.run("quit()").error is None


def test_compiler_warmed_but_syntax_errors_reported(sb):
    r = sb.run("def f(:\n  pass")
    assert r.error is not None and r.error.startswith("SyntaxError"), r
    assert sb.run("print(sum(i for i in range(5)))").stdout == "10\n"


def test_worker_killed_mid_batch():
    # one worker, so the programs queued behind the first go out together in one batch message
    with Sandbox(workers=1, timeout_s=5.0) as pool:
        victim = pool.worker_pids()[0]
        codes = ["import time\ntime.sleep(0.3)\nprint(0)", "print(1)",
                 "import time\nprint('working', flush=True)\ntime.sleep(30)", "print(3)", "print(4)", "print(5)"]
        batch = pool.submit_many(codes)
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        results = batch.result(timeout=30)
        assert [r.stdout for r in results[:2]] == ["0\n", "1\n"]
        assert results[2].error.startswith("sandbox worker died") and results[2].limit == "worker", results[2]
        assert [(r.stdout, r.error) for r in results[3:]] == [("3\n", None), ("4\n", None), ("5\n", None)]
        assert pool.restarts == 1 and pool.worker_pids() != [victim]


def test_batch_cancelled_and_order_kept():
    with Sandbox(workers=1, timeout_s=5.0) as pool:
        first = pool.submit("import time\ntime.sleep(0.3)\nprint('first')")
        queued = [pool.submit(f"print({i})") for i in range(12)]
        assert queued[5].cancel()
        assert first.result().stdout == "first\n"
        assert [q.result().stdout for i, q in enumerate(queued) if i != 5] == [f"{i}\n" for i in range(12) if i != 5]


def test_leftovers_invisible_to_next_program_in_same_worker(sb):
    # consecutive programs on one worker (several per batch message): nothing a program writes survives it
    litter = ("import os\nmode = os.stat('.').st_mode & 0o777\nbefore = sorted(os.listdir('.'))\n"
              "seen = [os.path.exists(d + '/rstar_sb_left.txt') for d in ('/tmp', '/dev/shm', '/var/tmp')]\n"
              "for d in ('.', '/tmp', '/dev/shm', '/var/tmp'):\n"
              "    try:\n        open(os.path.join(d, 'rstar_sb_left.txt'), 'w').write('x')\n"
              "        os.mkdir(os.path.join(d, 'dir'))\n    except OSError:\n        pass\n"
              "os.chmod('.', 0o777)\n"
              "print(before, seen, mode, sorted(os.listdir('.')))")
    results = sb.run_many([litter] * 6)
    assert all(r.error is None for r in results), results
    assert [r.stdout for r in results] == ["[] [False, False, False] 448 ['dir', 'rstar_sb_left.txt']\n"] * 6, results


@pytest.mark.parametrize("layers", ["os_layers", "deny_layer"])
def test_hung_worker_mid_batch(monkeypatch, layers):
    # a worker that stops answering: the pool's backstop kills the program it had started (found through the
    # worker's start records), replaces the worker and runs the rest of the batch on the new one
    import rstar_jax.sandbox as sandbox
    monkeypatch.setattr(sandbox, "BACKSTOP_GRACE_S", 1.0)
    forced = {"namespaces": False, "drop_privileges": False} if layers == "deny_layer" else {}
    with Sandbox(workers=1, timeout_s=3.0, **forced) as pool:
        worker = pool.worker_pids()[0]
        codes = ["import time\ntime.sleep(0.3)\nprint(0)", "import time\ntime.sleep(30)", "print(2)", "print(3)"]
        batch = pool.submit_many(codes)
        time.sleep(1.0)
        program = children(worker)
        assert len(program) == 1
        os.kill(worker, signal.SIGSTOP)
        results = batch.result(timeout=30)
        assert results[0].stdout == "0\n"
        assert results[1].timed_out and "worker unresponsive" in results[1].error, results[1]
        assert [(r.stdout, r.error) for r in results[2:]] == [("2\n", None), ("3\n", None)]
        assert not alive(program[0]) and not alive(worker)
        assert pool.restarts == 1


def test_programs_keep_the_normal_scheduling_policy(sb):
    # the worker runs SCHED_BATCH (fewer context switches); its programs must not inherit that
    assert sb.run("import os\nprint(os.sched_getscheduler(0) == os.SCHED_OTHER)").stdout == "True\n"


def test_pipelined_requests_keep_order_through_a_worker_death():
    # 30 queued programs on one worker: after its first reply the pool sends the next message ahead, so the
    # program the worker dies in sits in a pipelined message; every other program still runs exactly once
    with Sandbox(workers=1, timeout_s=5.0) as pool:
        victim = pool.worker_pids()[0]
        codes = [f"print({i})" for i in range(30)]
        codes[12] = "import time\nprint('working', flush=True)\ntime.sleep(30)"
        batch = pool.submit_many(codes)
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)
        results = batch.result(timeout=30)
        assert results[12].error.startswith("sandbox worker died") and results[12].limit == "worker", results[12]
        assert [(r.stdout, r.error) for i, r in enumerate(results) if i != 12] == \
            [(f"{i}\n", None) for i in range(30) if i != 12]
        assert pool.restarts == 1


def test_requests_larger_than_the_pipe():
    # a message that may not fit the worker's request pipe is never written while the worker may be busy
    # writing results (both would block): it is held until the worker has answered what was sent before
    pad = "#" + "x" * 100_000 + "\n"
    with Sandbox(workers=1, timeout_s=5.0) as pool:
        codes = [(pad if i % 3 else "") + f"print({i})" for i in range(12)]
        assert [r.stdout for r in pool.run_many(codes)] == [f"{i}\n" for i in range(12)]

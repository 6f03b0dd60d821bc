"""Sandbox tests for the mechanisms that make the pool fast: each must keep every program's fresh, isolated state."""
from __future__ import annotations

import pytest

from rstar_jax.sandbox import Sandbox


@pytest.fixture(scope="module", params=["os_layers", "deny_layer"])
def sb(request):
    forced = {"namespaces": False, "drop_privileges": False} if request.param == "deny_layer" else {}
    with Sandbox(workers=1, timeout_s=2.0, memory_mb=256, **forced) as pool:
        yield pool


def test_worker_stays_lean(sb):
    # threading (and what imports it) doubles every fork's cost; the program's own imports are its business
    probe = "import sys\nprint(sorted(m for m in ('threading', 'logging', 'subprocess', 'queue') if m in sys.modules))"
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


def test_compiler_warmed_but_syntax_errors_reported(sb):
    r = sb.run("def f(:\n  pass")
    assert r.error is not None and r.error.startswith("SyntaxError"), r
    assert sb.run("print(sum(i for i in range(5)))").stdout == "10\n"

"""Sandbox tests: a corpus of hostile programs, each followed by a normal run on the same pool."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from procs import alive
from rstar_jax.sandbox import BatchHandle, ExecResult, Sandbox, cap_output

SECRET_VAR = "RSTAR_SANDBOX_TEST_SECRET"
NORMAL = "import math\nx = math.factorial(5)\nprint(x)"


@pytest.fixture(scope="module", params=["os_layers", "deny_layer"])
def sb(request):
    """The same corpus runs on a pool with every OS layer this machine allows, and on one forced onto the
    audit-hook deny layer (what a machine without namespaces or root gets)."""
    os.environ[SECRET_VAR] = "hunter2"
    forced = {"namespaces": False, "drop_privileges": False} if request.param == "deny_layer" else {}
    with Sandbox(workers=2, timeout_s=2.0, memory_mb=256, **forced) as pool:
        if request.param == "deny_layer":
            assert pool.layers.network == "deny" and pool.layers.filesystem == "deny"
        yield pool
    os.environ.pop(SECRET_VAR, None)


def deny_mode(sb: Sandbox) -> bool:
    return sb.layers.filesystem == "deny"


def os_layers_allowed() -> tuple[bool, str]:
    """Probes, in a fresh interpreter, whether this machine lets root enter namespaces and switch uid."""
    if os.geteuid() != 0:
        return False, "not root: uid switching and mount namespaces need root"
    probe = ("import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\n"
             "assert libc.unshare(0x40000000 | 0x00020000) == 0\nos.setresuid(200999, 200999, 200999)")
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True)
    return done.returncode == 0, "unshare(CLONE_NEWNET|CLONE_NEWNS) or setresuid refused in this container"


def run_then_normal(sb: Sandbox, code: str, **kw) -> ExecResult:
    """Runs a hostile program, then checks the pool still gives a correct normal result on every worker."""
    result = sb.run(textwrap.dedent(code), **kw)
    follow = sb.run_many([NORMAL] * 4)
    assert [r.stdout for r in follow] == ["120\n"] * 4, follow
    assert all(r.error is None for r in follow), follow
    return result


def test_cap_output_keeps_head_and_tail():
    text = "a" * 600 + "b" * 600
    capped = cap_output(text)
    assert capped == "a" * 512 + "b" * 512
    assert cap_output("short") == "short"
    assert cap_output("0123456789", head=2, tail=3) == "01789"
    assert cap_output("0123456789", head=2, tail=0) == "01"
    with pytest.raises(ValueError, match="head and tail"):
        cap_output("x", head=-1)


def test_normal_program_and_error_line(sb):
    ok = sb.run("print('hi')\nprint(2 ** 10)")
    assert ok.stdout == "hi\n1024\n" and ok.error is None and not ok.timed_out and ok.exit_code == 0
    bad = sb.run("print('before')\ny = undefined_name + 1")
    assert bad.stdout == "before\n"
    assert bad.error == "NameError: name 'undefined_name' is not defined"
    assert "Traceback" in bad.stderr
    syntax = sb.run("def f(:\n  pass")
    assert syntax.error.startswith("SyntaxError")
    assert sb.run("import sys; sys.exit(0)").error is None
    assert sb.run("import sys; sys.exit(4)").error == "SystemExit: 4"


def test_no_state_leaks_between_programs(sb):
    first = sb.run("import math\nmath.pi = 3\nsecret_value = 42\nimport builtins\nbuiltins.leak = 1\nprint('set')")
    assert first.stdout == "set\n"
    probes = sb.run_many(["import math\nprint(math.pi)",
                          "print('secret_value' in globals())",
                          "import builtins\nprint(hasattr(builtins, 'leak'))"] * 2)
    assert [p.stdout for p in probes] == [f"{__import__('math').pi}\n", "False\n", "False\n"] * 2


def test_results_in_order_under_concurrency(sb):
    codes = [f"import time\ntime.sleep({0.02 * (i % 3)})\nprint({i} * {i})" for i in range(40)]
    results = sb.run_many(codes)
    assert [r.stdout for r in results] == [f"{i * i}\n" for i in range(40)]


def test_submit_many_returns_at_once_and_resolves_in_order(sb):
    start = time.monotonic()
    handle = sb.submit_many(["import time\ntime.sleep(0.5)\nprint('a')", "print('b')"])
    assert isinstance(handle, BatchHandle)
    assert time.monotonic() - start < 0.3          # the caller keeps going while programs run
    assert [r.stdout for r in handle.result(timeout=10)] == ["a\n", "b\n"]
    assert handle.done()


def test_bad_input_named(sb):
    with pytest.raises(TypeError, match=r"codes\[1\] must be str"):
        sb.submit_many(["print(1)", b"print(2)"])
    with pytest.raises(ValueError, match="timeout_s"):
        sb.run("print(1)", timeout_s=-1)
    with pytest.raises(ValueError, match="workers"):
        Sandbox(workers=0)


def test_infinite_loop_times_out(sb):
    r = run_then_normal(sb, "print('start', flush=True)\nwhile True:\n    pass", timeout_s=0.5)
    assert r.timed_out and r.error == "timeout after 0.5s" and r.limit == "timeout"
    assert r.stdout == "start\n"
    assert 0.5 <= r.duration_s < 1.5


def test_sleep_times_out(sb):
    r = run_then_normal(sb, "import time\ntime.sleep(100)", timeout_s=0.3)
    assert r.timed_out and r.duration_s < 1.5


def test_memory_bomb(sb):
    r = run_then_normal(sb, "x = []\nwhile True:\n    x.append(bytearray(10 * 2**20))")
    assert r.error == "memory limit exceeded (MemoryError)" and r.limit == "memory"
    big = run_then_normal(sb, "s = 'x' * (2 * 2**30)")
    assert big.error == "memory limit exceeded (MemoryError)"


def test_huge_output_is_capped(sb):
    r = run_then_normal(sb, "print('A' * 600, end='')\nprint('B' * 10**7, end='')\nprint('C' * 600, end='')")
    assert r.error is None
    assert r.stdout == "A" * 512 + "C" * 512
    flood = run_then_normal(sb, "while True:\n    print('spam' * 1000)", timeout_s=0.5)
    assert flood.timed_out and len(flood.stdout) == 1024


def test_deep_recursion(sb):
    r = run_then_normal(sb, "def f(n):\n    return f(n + 1)\nf(0)")
    assert r.error.startswith("RecursionError")
    # Without the interpreter's guard the frames grow until a limit (memory, stack or time) stops them.
    unbounded = run_then_normal(sb, "import sys\nsys.setrecursionlimit(10**8)\ndef f(n):\n    return [n] + f(n + 1)\nf(0)",
                                timeout_s=1.0)
    assert unbounded.error is not None


def test_os_exit(sb):
    r = run_then_normal(sb, "print('partial')\nimport os\nos._exit(3)")
    assert r.error == "program exited with code 3 before finishing" and r.exit_code == 3


def test_ignoring_signals_still_times_out(sb):
    r = run_then_normal(sb, """
        import signal
        for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXCPU):
            signal.signal(s, signal.SIG_IGN)
        while True:
            pass
        """, timeout_s=0.5)
    assert r.timed_out


def test_environment_is_scrubbed(sb):
    r = run_then_normal(sb, f"import os\nprint(os.environ.get('{SECRET_VAR}'))\nprint(sorted(os.environ))")
    assert r.stdout.splitlines()[0] == "None"
    assert SECRET_VAR not in r.stdout
    snoop = run_then_normal(sb, f"print(open('/proc/{os.getpid()}/environ', 'rb').read())")
    assert snoop.error is not None and "hunter2" not in snoop.stdout


def test_network_is_blocked(sb):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    listener.settimeout(0.2)
    try:
        r = run_then_normal(sb, f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
                                f"s.sendall(b'leak')\nprint('connected')")
        assert r.error is not None and "connected" not in r.stdout
        with pytest.raises(socket.timeout):
            listener.accept()
    finally:
        listener.close()


def test_files_outside_workdir_untouched(sb, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("original")
    tmp_path.chmod(0o755)
    victim.chmod(0o644)
    r = run_then_normal(sb, f"""
        import os
        results = []
        for action in (lambda: open({str(victim)!r}, 'w').write('pwned'),
                       lambda: os.remove({str(victim)!r}),
                       lambda: os.rename({str(victim)!r}, {str(victim)!r} + '.moved'),
                       lambda: open({str(tmp_path / 'new.txt')!r}, 'w').write('x'),
                       lambda: open('/work/sandbox_escape.txt', 'w').write('x')):
            try:
                action()
                results.append('ok')
            except OSError as e:
                results.append(type(e).__name__)
        print(results)
        """)
    assert "'ok'" not in r.stdout, r
    assert victim.read_text() == "original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]
    assert not os.path.exists("/work/sandbox_escape.txt")


def test_workdir_is_private_and_removed(sb):
    first = sb.run("import os\nprint(os.getcwd())\nopen('note.txt', 'w').write('x')\n"
                   "open('/tmp/shared.txt', 'w').write('y')")
    assert first.stdout.strip() and (first.error is None or deny_mode(sb)), first
    later = sb.run_many(["import os\nprint(sorted(os.listdir('.')), os.path.exists('/tmp/shared.txt'))"] * 4)
    assert [r.stdout for r in later] == ["[] False\n"] * 4
    assert not os.path.exists("/tmp/shared.txt")


def test_raising_own_limits_fails(sb):
    r = run_then_normal(sb, """
        import resource
        try:
            resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            print('raised')
        except (ValueError, OSError) as e:
            print('refused')
        s = bytearray(1 << 30)
        """)
    assert r.stdout == "refused\n"
    assert r.error == "memory limit exceeded (MemoryError)"


def test_child_left_running_is_killed(sb):
    r = run_then_normal(sb, """
        import os, subprocess, sys
        p = subprocess.Popen(['sleep', '1000'])
        pid = os.fork()
        if pid == 0:
            os.setsid()
            import time
            while True:
                time.sleep(1)
        print(p.pid, pid)
        """)
    if deny_mode(sb):
        assert r.error.startswith("PermissionError: sandbox: subprocess.Popen is disabled"), r
        return
    assert r.error is None, r
    pids = [int(x) for x in r.stdout.split()]
    for pid in pids:
        assert not alive(pid), f"process {pid} outlived its program"


def test_bounded_fork_bomb(sb):
    # At most 2**10 processes even with no limit at all; the per-uid process limit stops it far earlier.
    r = run_then_normal(sb, """
        import os, time
        me, failed = os.getpid(), 0
        for _ in range(10):
            try:
                os.fork()
            except OSError:
                failed += 1
        if os.getpid() != me:
            time.sleep(100)
        time.sleep(0.5)           # the first forks may all succeed before the tree reaches the limit
        try:
            if os.fork() == 0:
                time.sleep(100)
        except OSError:
            failed += 1
        print('failed forks:', failed)
        """, timeout_s=3.0)
    if deny_mode(sb):
        assert r.stdout == "failed forks: 11\n"                        # every fork refused
    else:
        assert r.error is None and int(r.stdout.split()[-1]) > 0, r   # the limit made forks fail
    assert not _processes_of_uids_left(sb)


def test_killing_the_parent(sb):
    before = sb.worker_pids()
    r = run_then_normal(sb, f"import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n"
                            f"os.kill({os.getpid()}, signal.SIGKILL)")
    assert r.error.startswith("PermissionError"), r
    assert sb.worker_pids() == before


def test_worker_dying_mid_program_is_replaced(sb):
    restarts = sb.restarts
    future = sb.submit("import time\nprint('working', flush=True)\ntime.sleep(30)")
    time.sleep(0.5)                       # let it start on some worker
    victims = sb.worker_pids()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    r = future.result(timeout=20)
    assert r.error.startswith("sandbox worker died") and r.limit == "worker", r
    follow = sb.run_many([NORMAL] * 4)
    assert [f.stdout for f in follow] == ["120\n"] * 4, follow
    assert len(sb.worker_pids()) == 2 and not set(sb.worker_pids()) & set(victims)
    assert sb.restarts == restarts + 2


def test_concurrent_programs_do_not_see_each_other(sb):
    writer = "import os, time\nopen('mine.txt', 'w').write(str(os.getpid()))\ntime.sleep(0.6)\nprint(os.listdir('.'))"
    reader = ("import os, time\ntime.sleep(0.2)\nprint(os.listdir('.'), "
              "[p for p in os.listdir('/proc') if p.isdigit() and os.path.exists(f'/proc/{p}/cwd/mine.txt')])")
    w, r = sb.run_many([writer, reader])
    assert w.stdout == "['mine.txt']\n", w
    assert r.stdout.startswith("[] [")
    assert "mine" not in r.stdout


def test_layers_chosen_and_logged(caplog):
    allowed, reason = os_layers_allowed()
    with caplog.at_level("INFO", logger="rstar_jax.sandbox"):
        with Sandbox(workers=1, timeout_s=1.0) as pool:
            layers = pool.layers
    assert "network=" in caplog.text and "filesystem=" in caplog.text
    if not allowed:
        pytest.skip(reason)
    assert layers.network == "namespace" and layers.filesystem == "private tmpfs"
    assert layers.user.startswith("uid ") and layers.no_new_privs and layers.subreaper


def test_close_fails_queued_programs_and_refuses_new_ones():
    pool = Sandbox(workers=1, timeout_s=5.0)
    running = pool.submit("import time\ntime.sleep(0.5)\nprint('ran')")
    time.sleep(0.2)
    queued = pool.submit("print('never')")
    pool.close()
    assert running.result().stdout == "ran\n"
    with pytest.raises(RuntimeError, match="closed before the program ran"):
        queued.result()
    with pytest.raises(RuntimeError, match="closed"):
        pool.submit("print(1)")
    assert pool.worker_pids() == []


def _processes_of_uids_left(sb: Sandbox) -> list[int]:
    uids = {s.uid for s in sb._slots if s.uid is not None}
    left = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids and alive(int(entry)):
                    left.append(int(entry))
            except FileNotFoundError:
                pass
    return left


def test_odd_bytes_in_output_and_code(sb):
    raw, surrogate, nul = sb.run_many(["import sys\nsys.stdout.buffer.write(b'\\xff ok\\n')",
                                       "print('\\udcff')", "x = 1\0"])
    assert raw.stdout == "\ufffd ok\n" and raw.error is None
    assert surrogate.stdout == "\\udcff\n"
    assert nul.error is not None and "null bytes" in nul.error


def test_heavy_module_warmed_on_demand(sb):
    pytest.importorskip("sympy")
    codes = ["from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x))"] * 4
    # a generous limit: importing sympy on a loaded 2-core machine can take seconds (this test is about warming)
    assert [r.stdout for r in sb.run_many(codes, timeout_s=30.0)] == ["[2, 3]\n"] * 4
    # once a worker has seen sympy, its forks inherit it: the module is loaded before the program imports it
    probe = "import sys\nwas_loaded = 'sympy' in sys.modules\nimport sympy\nprint(was_loaded)"
    assert [r.stdout for r in sb.run_many([probe] * 4, timeout_s=30.0)] == ["True\n"] * 4
    # a module the text never names is not loaded (the name is built at run time so the text omits it)
    assert sb.run("import sys\nprint('sci' + 'py' in sys.modules)").stdout == "False\n"

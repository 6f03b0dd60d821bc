"""The sandbox's worker process: sets up isolation once, then runs each program in a fresh fork of itself.

`rstar_jax.sandbox.Sandbox` starts it as ``python -I -S -c <boot> <size> sandbox_worker.py '<json config>'``;
the boot reads this module's compiled code from the request pipe and runs it as __main__ (see
sandbox._WORKER_BOOT). What the worker holds is copied into every fork and unmapped at every exit, so it
skips `site` (adding the site-packages directories itself) and imports only light standard-library modules:
`threading` (also pulled in by logging, subprocess, queue and concurrent.futures) doubles what a fork costs
through its at-fork hook and the pages it makes the child touch (a bare fork + exit went from ~0.6 to ~1.3 ms
of CPU on the dev box), and dataclasses, tempfile and shutil add ~2 MB to every fork. The pool imports the
pieces both sides share from here: output capping, the pipe framing and the start records. See
rstar_jax/sandbox.py for the layers and limits.
"""
from __future__ import annotations

import builtins
import ctypes
import errno
import json
import math
import os
import resource
import select
import signal
import stat
import struct
import sys
import time
import traceback
import types
from collections.abc import Sequence


class _WorkerLog:
    """The few messages a worker emits, to its stderr (the caller's), without importing logging."""

    def __init__(self, name: str):
        self.name = name

    def _emit(self, level: str, msg: str, *args: object) -> None:
        try:
            sys.stderr.write(f"{level}:{self.name}:{msg % args}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    def info(self, msg: str, *args: object) -> None:      # the pool logs layers; workers stay quiet
        pass

    def warning(self, msg: str, *args: object) -> None:
        self._emit("WARNING", msg, *args)

    def error(self, msg: str, *args: object) -> None:
        self._emit("ERROR", msg, *args)


log = _WorkerLog("rstar_jax.sandbox.worker")

OUTPUT_HEAD = 512
OUTPUT_TAIL = 512
# World-writable directories: the only places an unprivileged program can write outside its working dir.
SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
DRAIN_GRACE_S = 0.5          # how long to keep reading output after a program's processes are gone
MAX_RESULT_BYTES = 1 << 20   # the child's result message; anything longer is a forged or broken channel
MiB = 1 << 20
# A worker writes a (seq, pid) record to a side pipe when it starts a program; the pool reads that pipe only
# when the worker dies or hangs, to know which program was running and whose process group to kill.
_STARTED = struct.Struct("<qq")

_CLONE_NEWNS = 0x00020000
_CLONE_NEWNET = 0x40000000
_MS_NOSUID, _MS_NODEV, _MS_BIND, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000
_PR_SET_PDEATHSIG, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 1, 38, 36
_SYS_CLOSE_RANGE = 436       # the same number on every Linux architecture (syscalls added since 5.1 share one table)


def cap_output(text: str, head: int = OUTPUT_HEAD, tail: int = OUTPUT_TAIL) -> str:
    """Keeps the first `head` and last `tail` characters of `text` (the reference keeps 512 + 512)."""
    if head < 0 or tail < 0:
        raise ValueError(f"cap_output: head and tail must be >= 0, got head={head}, tail={tail}")
    if len(text) <= head + tail:
        return text
    return text[:head] + (text[-tail:] if tail else "")


# ---------------------------------------------------------------- framing: 4-byte length + JSON, over pipes

def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _frame(obj: dict) -> bytes:
    payload = json.dumps(obj).encode("utf-8")
    return struct.pack(">I", len(payload)) + payload


def _send(fd: int, obj: dict) -> None:
    _write_all(fd, _frame(obj))


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes | None:
    """Reads exactly n bytes; None on EOF; TimeoutError past `deadline` (monotonic)."""
    chunks, got = [], 0
    poller = select.poll()                 # not select(): the caller may hold descriptors above 1024
    poller.register(fd, select.POLLIN)
    while got < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(left * 1000):
                raise TimeoutError
        chunk = os.read(fd, n - got)
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None) -> dict | None:
    """One framed message, or None if the other side closed the pipe."""
    header = _read_exact(fd, 4, deadline)
    if header is None:
        return None
    payload = _read_exact(fd, struct.unpack(">I", header)[0], deadline)
    return None if payload is None else json.loads(payload)


# ---------------------------------------------------------------- the worker (runs in the spawned interpreter)

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, arg: int) -> bool:
    return _libc.prctl(option, arg, 0, 0, 0) == 0


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _mount(source: bytes | None, target: bytes, fstype: bytes | None, flags: int, data: bytes | None) -> bool:
    return _libc.mount(source, target, fstype, flags, data) == 0


class _ByteCapture:
    """Keeps the head and the tail of a byte stream of any length, in bounded memory."""

    def __init__(self, head_chars: int, tail_chars: int):
        self.head_max = 4 * head_chars          # UTF-8 needs at most 4 bytes a character
        self.tail_max = 4 * tail_chars + 4
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, data: bytes) -> None:
        self.total += len(data)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += data[:room]
            data = data[room:]
        if data:
            self.tail += data
            if len(self.tail) > self.tail_max:
                del self.tail[:len(self.tail) - self.tail_max]

    def text(self, head: int, tail: int) -> str:
        """The captured stream decoded and capped like `cap_output`."""
        if self.total == len(self.head) + len(self.tail):      # nothing was dropped
            return cap_output((self.head + self.tail).decode("utf-8", "replace"), head, tail)
        tail_text = self.tail.decode("utf-8", "replace")
        return self.head.decode("utf-8", "replace")[:head] + (tail_text[-tail:] if tail else "")


def _child_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _writes(mode: object, flags: object) -> bool:
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return True
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


def _other_process_file(path: object) -> bool:
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    if not isinstance(path, (str, os.PathLike)):
        return False
    parts = os.path.realpath(os.fspath(path)).split(os.sep)
    return len(parts) > 2 and parts[1] == "proc" and parts[2].isdigit() and parts[2] != str(os.getpid())


def _install_deny_hook(deny_network: bool, deny_files: bool, workdir: str) -> None:
    """Audit-hook layer for machines without namespaces or uid switching; it cannot be removed once added.

    deny_network refuses every socket operation. deny_files (used when programs keep the worker's uid, so
    neither file permissions nor a per-uid process limit protect anything) refuses writes outside `workdir`,
    new processes, signals to other processes and ctypes. A best-effort layer: the OS layers are the real ones.
    """
    root = os.path.realpath(workdir)
    path_events = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.link",
                   "os.symlink", "os.truncate", "os.utime", "shutil.rmtree", "shutil.move", "shutil.copyfile"}
    forbidden_events = {"os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
                        "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym", "ctypes.dlsym/handle", "os.kill",
                        "os.killpg", "resource.setrlimit", "resource.prlimit"}

    def inside(path: object) -> bool:
        if isinstance(path, int):
            return True
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, (str, os.PathLike)):
            return True
        real = os.path.realpath(os.fspath(path))
        return real == root or real.startswith(root + os.sep)

    def hook(event: str, args: tuple) -> None:
        if deny_network and event.startswith("socket."):
            raise PermissionError(f"sandbox: network access is disabled ({event})")
        if not deny_files:
            return
        if event == "open" and _other_process_file(args[0]):
            raise PermissionError(f"sandbox: reading other processes' /proc files is disabled ({args[0]!r})")
        if event == "open" and len(args) >= 3 and _writes(args[1], args[2]) and not inside(args[0]):
            raise PermissionError(f"sandbox: writing outside the working directory is disabled ({args[0]!r})")
        if event in path_events and not all(inside(a) for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))):
            raise PermissionError(f"sandbox: changing files outside the working directory is disabled ({event})")
        if event in forbidden_events:
            raise PermissionError(f"sandbox: {event} is disabled")

    sys.addaudithook(hook)


def _run_code(code: str) -> str | None:
    """Executes `code` as __main__ with fresh globals; returns None or the error line."""
    globs = {"__name__": "__main__", "__builtins__": builtins}
    try:
        exec(compile(code, "<program>", "exec"), globs)
    except SystemExit as e:
        if e.code is None or e.code == 0:
            return None
        return f"SystemExit: {e.code}"
    except MemoryError:
        return "memory limit exceeded (MemoryError)"
    except BaseException as e:  # noqa: BLE001 - any failure of the program is its result
        try:
            traceback.print_exc()
        except BaseException:  # noqa: BLE001 - printing may itself hit a limit
            pass
        lines = traceback.format_exception_only(type(e), e)
        return lines[-1].strip() if lines else type(e).__name__
    return None


# Compiled (never run) once in each worker. An interpreter's first compile() builds the parser's and the AST's
# internal types, ~3 ms of CPU and ~250 page faults that every forked child would otherwise repeat for its
# own program; compiled in the worker, the children inherit that state.
_WARM_SOURCE = """
import math
from fractions import Fraction
def f(a, *args, b=1, **kw):
    global g
    return [x * 2 for x in args if x], {k: v for k, v in kw.items()}, {a}, (lambda y: y ** 2)(b)
class C:
    async def m(self):
        async with self as s:
            await s
try:
    assert f(1) is not None, f"{1!r:>3}"
    with open("x") as h, open("y"):
        del h
except (ValueError, KeyError) as e:
    raise RuntimeError("x") from e
else:
    pass
finally:
    n = sum(i * i for i in range(10)) // 3 % 2 - -1 + 2.5j
while n and not n < 1 <= 2:
    n, *rest = [n >> 1, n << 1, n & 1, n | 1, n ^ 1, ~n]
    break
match n:
    case [1, *_] | {"k": _} | C(m=2) if n:
        pass
print(math.comb(10, 4), Fraction(3, 8), 1e-3, 0x1F, b"x", ..., None, True)
"""


def _child_streams() -> tuple:
    """The text streams a child gets as sys.stdin/stdout/stderr, made once in the worker and never used there.

    They wrap descriptor numbers 0, 1 and 2, which each child points at /dev/null and its output pipes before
    it installs them, so every child starts from an unused copy; building them in each child cost ~0.4 ms.
    """
    return (open(0, "r", closefd=False),
            open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False),
            open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1))


def _batch_scheduling() -> bool:
    """Marks the worker SCHED_BATCH: a program's output or exit then wakes it without preempting the program,
    so it handles stdout, result and exit in one go instead of bouncing between them (fewer context
    switches; +5-15% programs/s in interleaved runs on the loaded 2-core box). Same nice level and CPU share;
    each child sets itself back to the normal policy before its program runs."""
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        return False
    return True


def _warm_compiler() -> None:
    compile(_WARM_SOURCE, "<warm>", "exec")


class _Worker:
    """Runs in the worker process: sets up isolation once, then forks one child per request."""

    def __init__(self, config: dict):
        self.limits = types.SimpleNamespace(**config["limits"])     # validated by the pool's Limits
        self.uid: int | None = config["uid"]
        self.started_fd: int = config["started_fd"]
        self.pid = os.getpid()
        self.pagesize = os.sysconf("SC_PAGE_SIZE")
        self.tmpfs_dirs: list[str] = []
        self.base_dir = ""
        self.warm_pending = list(config["warm_on_demand"])
        self.layers = self._set_up(config)
        self.workdir = os.path.join(self.tmpfs_dirs[0] if self.tmpfs_dirs else self.base_dir, "run")
        self.workdir_in_tmpfs = bool(self.tmpfs_dirs)
        # resolved once here: realpath() on every directory after every program cost ~0.4 ms
        self.swept_dirs = [] if self.uid is None else sorted(
            {os.path.realpath(d) for d in SHARED_WRITABLE_DIRS if os.path.isdir(d)} - set(self.tmpfs_dirs))
        os.environ.clear()                       # children inherit this; setting it per child costs a lot more
        os.environ.update(_child_env(self.workdir))
        self.child_streams = _child_streams()
        self.devnull = os.open(os.devnull, os.O_RDONLY)     # each child's stdin (closed there after the dup)
        self.close_range = _close_range_works()
        _warm_compiler()
        self.vm_base = self._vm_size()

    # -- startup

    def _set_up(self, config: dict) -> dict:
        """Turns on every isolation layer this machine allows; returns which (the pool's `Layers` fields)."""
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        subreaper = _prctl(_PR_SET_CHILD_SUBREAPER, 1)
        self.batch_scheduling = _batch_scheduling()
        netns = mountns = False
        if config["namespaces"] is not False:
            mountns = _unshare(_CLONE_NEWNS) and _mount(None, b"/", None, _MS_REC | _MS_PRIVATE, None)
            netns = _unshare(_CLONE_NEWNET)
            if config["namespaces"] is True and not (netns and mountns):
                raise OSError(errno.EPERM, "namespaces=True but unshare(CLONE_NEWNET|CLONE_NEWNS) is not permitted")
        if mountns:
            self._mount_private_tmp()
            mountns = _expose_interpreter()
        if self.uid is not None and not mountns and _interpreter_hidden():
            log.warning("sandbox: the interpreter lives under a directory other users cannot enter and there is "
                        "no mount namespace to expose it; programs keep this worker's uid")
            self.uid = None
        self.base_dir = _private_dir(_temp_parent())
        os.chmod(self.base_dir, 0o711)
        if self.uid is not None and not self._can_switch_to(self.uid):
            self.uid = None
        if self.uid is not None:
            self._kill_uid()                     # leftovers of a previous worker on this slot
        self._preload(config["preload"])
        if self.tmpfs_dirs:
            filesystem = "private tmpfs"
        elif self.uid is not None:
            filesystem = "uid + sweep"
        else:
            filesystem = "deny"
        return {"network": "namespace" if netns else "deny", "filesystem": filesystem,
                "user": f"uid {self.uid}" if self.uid is not None else "unchanged",
                "no_new_privs": self._probe_no_new_privs(), "subreaper": subreaper}

    def _mount_private_tmp(self) -> None:
        size = f"size={self.limits.disk_mb}m,mode=1777".encode()
        seen = set()
        keep = _interpreter_dirs()
        for d in SHARED_WRITABLE_DIRS:
            real = os.path.realpath(d)
            if real in seen or not os.path.isdir(real):
                continue
            seen.add(real)
            if any(k == real or k.startswith(real + os.sep) for k in keep):
                # e.g. a virtualenv under /tmp: a tmpfs would hide its packages, so this directory stays
                # shared and is swept of the program's files instead (see _clean_files)
                log.info("sandbox: %s holds the interpreter's packages; it stays shared, swept by uid", real)
                continue
            if _mount(b"tmpfs", real.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, size):
                self.tmpfs_dirs.append(real)

    def _can_switch_to(self, uid: int) -> bool:
        pid = os.fork()
        if pid == 0:
            try:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
                os._exit(0)
            except BaseException:  # noqa: BLE001
                os._exit(1)
        return os.waitpid(pid, 0)[1] == 0

    def _probe_no_new_privs(self) -> bool:
        pid = os.fork()
        if pid == 0:
            os._exit(0 if _prctl(_PR_SET_NO_NEW_PRIVS, 1) else 1)
        return os.waitpid(pid, 0)[1] == 0

    def _preload(self, modules: Sequence[str]) -> None:
        for name in modules:
            try:
                __import__(name)
            except ImportError:
                pass

    def _warm_for(self, code: str) -> None:
        """Imports (once) each on-demand module the program mentions, so its fork inherits it."""
        wanted = [name for name in self.warm_pending if name in code]
        if wanted:
            self._preload(wanted)
            self.warm_pending = [name for name in self.warm_pending if name not in wanted]
            self.vm_base = self._vm_size()

    def _vm_size(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * self.pagesize

    # -- one program

    def run(self, code: str, timeout_s: float, seq: int) -> dict:
        self._warm_for(code)
        workdir = self.workdir
        os.mkdir(workdir, 0o700)
        if self.uid is not None:
            os.chown(workdir, self.uid, self.uid)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        res_r, res_w = os.pipe()
        start = time.monotonic()
        _write_all(self.started_fd, _STARTED.pack(seq, 0))     # from here on, a dead worker costs this program
        pid = os.fork()
        if pid == 0:
            self._child(code, workdir, out_w, err_w, res_w, timeout_s)
        _write_all(self.started_fd, _STARTED.pack(seq, pid))   # lets the pool kill its process group if we die
        for fd in (out_w, err_w, res_w):
            os.close(fd)
        try:
            result = self._collect(pid, out_r, err_r, res_r, start, timeout_s)
        finally:
            self._clean_files(workdir)
        return result

    def _child(self, code: str, workdir: str, out_w: int, err_w: int, res_w: int, timeout_s: float) -> None:
        """Runs in the forked child; never returns."""
        me = os.getpid()
        report_fd = res_w
        try:
            os.setsid()
            _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            if self.batch_scheduling:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
            os.dup2(self.devnull, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.dup2(res_w, 3)
            report_fd = 3
            _close_fds_from(4, self.close_range)
            os.chdir(workdir)
            self._set_limits(timeout_s)
            if self.uid is not None:
                os.setgroups([])
                os.setresgid(self.uid, self.uid, self.uid)
                os.setresuid(self.uid, self.uid, self.uid)
            _prctl(_PR_SET_NO_NEW_PRIVS, 1)
            sys.stdin, sys.stdout, sys.stderr = sys.__stdin__, sys.__stdout__, sys.__stderr__ = self.child_streams
            sys.dont_write_bytecode = True
            deny_net = self.layers["network"] == "deny"
            deny_files = self.layers["filesystem"] == "deny"
            if deny_net or deny_files:
                _install_deny_hook(deny_net, deny_files, workdir)
        except BaseException as e:  # noqa: BLE001
            os.write(report_fd, json.dumps({"setup_error": repr(e)}).encode())
            os._exit(70)
        error = _run_code(code)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001 - a full disk or a closed fd is the program's own doing
                pass
        if os.getpid() == me:                 # forks of the program that fall through here stay silent
            try:
                _write_all(3, json.dumps({"error": error}).encode())
            except OSError:
                pass
        os._exit(0)

    def _set_limits(self, timeout_s: float) -> None:
        lim = self.limits
        address_space = self.vm_base + lim.memory_mb * MiB
        cpu = int(math.ceil(timeout_s)) + 1
        settings = [
            (resource.RLIMIT_AS, address_space, address_space),
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_FSIZE, lim.disk_mb * MiB, lim.disk_mb * MiB),
            (resource.RLIMIT_NOFILE, lim.max_open_files, lim.max_open_files),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        if self.uid is not None:   # per-uid count: only meaningful for our own dedicated uid
            settings.append((resource.RLIMIT_NPROC, lim.max_processes, lim.max_processes))
        for which, soft, hard in settings:
            resource.setrlimit(which, (soft, hard))

    def _collect(self, pid: int, out_r: int, err_r: int, res_r: int, start: float, timeout_s: float) -> dict:
        """Reads output until the child exits or the deadline; then kills what is left and builds the result."""
        lim = self.limits
        out, err = _ByteCapture(lim.output_head, lim.output_tail), _ByteCapture(lim.output_head, lim.output_tail)
        res = bytearray()
        sinks = {out_r: out.add, err_r: err.add, res_r: lambda d: res.extend(d[:MAX_RESULT_BYTES - len(res)])}
        pidfd = os.pidfd_open(pid)
        poller = select.poll()
        for fd in (*sinks, pidfd):
            poller.register(fd, select.POLLIN)
        open_fds = set(sinks)
        deadline = start + timeout_s
        timed_out, exited = False, False
        while not exited:
            left = deadline - time.monotonic()
            if left <= 0:
                timed_out = True
                break
            for fd, _ in poller.poll(left * 1000):
                if fd == pidfd:
                    exited = True
                else:
                    self._read_into(fd, sinks, poller, open_fds)
        poller.unregister(pidfd)
        os.close(pidfd)
        if timed_out:
            _kill_quietly(lambda: os.killpg(pid, signal.SIGKILL))
        status = os.waitpid(pid, 0)[1]
        duration = time.monotonic() - start
        self._kill_leftovers(pid)
        self._drain(sinks, poller, open_fds)
        return self._result(status, timed_out, timeout_s, bytes(res), out, err, duration)

    @staticmethod
    def _read_into(fd: int, sinks: dict, poller: select.poll, open_fds: set) -> None:
        data = os.read(fd, 1 << 16)
        if data:
            sinks[fd](data)
        else:
            poller.unregister(fd)
            open_fds.discard(fd)
            os.close(fd)

    def _drain(self, sinks: dict, poller: select.poll, open_fds: set) -> None:
        """Reads what is still buffered in the pipes; gives up after a grace period (a writer that escaped)."""
        end = time.monotonic() + DRAIN_GRACE_S
        while open_fds and time.monotonic() < end:
            for fd, _ in poller.poll(max(0.0, end - time.monotonic()) * 1000):
                self._read_into(fd, sinks, poller, open_fds)
        for fd in list(open_fds):
            os.close(fd)

    def _result(self, status: int, timed_out: bool, timeout_s: float, res: bytes,
                out: _ByteCapture, err: _ByteCapture, duration: float) -> dict:
        exit_code = os.waitstatus_to_exitcode(status)
        limit = None
        message = _parse_child_message(res)
        if timed_out:
            error, limit = f"timeout after {timeout_s:g}s", "timeout"
        elif message is not None and "setup_error" in message:
            error = f"sandbox setup failed: {message['setup_error']}"
        elif message is not None and exit_code == 0:
            error = message.get("error")
            if error is not None and not isinstance(error, str):
                error = repr(error)
            if error is not None and error.startswith("memory limit exceeded"):
                limit = "memory"
        else:
            error, limit = _exit_reason(exit_code)
        return {"stdout": out.text(self.limits.output_head, self.limits.output_tail),
                "stderr": err.text(self.limits.output_head, self.limits.output_tail),
                "error": error, "timed_out": timed_out, "exit_code": exit_code,
                "duration_s": duration, "limit": limit}

    # -- cleanup after each program

    def _kill_leftovers(self, pgid: int) -> None:
        """Kills and reaps every process the program started (they all descend from this subreaper)."""
        _kill_quietly(lambda: os.killpg(pgid, signal.SIGKILL))
        for attempt in range(400):
            if not self._reap_and_check_children():
                return
            if self.uid is not None:
                self._kill_uid()
            else:
                self._kill_descendants()
            time.sleep(0.0005 * min(attempt + 1, 20))
        log.warning("sandbox worker %d: program processes survived repeated SIGKILL", self.pid)

    @staticmethod
    def _reap_and_check_children() -> bool:
        """Reaps exited children; True if some child is still running."""
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return False
            if pid == 0:
                return True

    def _kill_uid(self) -> None:
        """SIGKILLs every process running as this worker's uid: kill(-1) with real and effective uid switched."""
        os.setresuid(self.uid, self.uid, 0)
        try:
            _kill_quietly(lambda: os.kill(-1, signal.SIGKILL))
        finally:
            os.setresuid(0, 0, 0)

    def _kill_descendants(self) -> None:
        parents: dict[int, list[int]] = {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            parents.setdefault(int(fields[1]), []).append(int(entry))
        stack = list(parents.get(self.pid, []))
        while stack:
            pid = stack.pop()
            _kill_quietly(lambda p=pid: os.kill(p, signal.SIGKILL))
            stack.extend(parents.get(pid, []))

    def _clean_files(self, workdir: str) -> None:
        if not self.workdir_in_tmpfs:             # else emptying that tmpfs below removes it
            _remove_tree(workdir)
        for d in self.tmpfs_dirs:                 # private to this worker: everything there is the program's
            _empty_dir(d)
        for d in self.swept_dirs:                 # shared ones: only what the program's uid created
            _empty_dir(d, owner=self.uid)

    def serve(self) -> None:
        """Reads batches of programs from the pool and streams back one result per program, in order."""
        _send(1, {"ready": self.layers})
        while True:
            request = _recv(0)
            if request is None:
                break
            for job in request["batch"]:
                _send(1, self.run(job["code"], job["timeout_s"], job["seq"]))
        _remove_tree(self.base_dir)


def _close_range_works() -> bool:
    """True where the kernel has close_range(2) (Linux 5.9+): closing an empty range then returns 0."""
    return sys.platform.startswith("linux") and _libc.syscall(
        _SYS_CLOSE_RANGE, ctypes.c_uint(1 << 30), ctypes.c_uint(1 << 30), ctypes.c_uint(0)) == 0


def _close_fds_from(first: int, close_range: bool = False) -> None:
    """Closes every open descriptor >= first: one close_range(2) call where the kernel has it, else the
    numbers listed in /proc/self/fd (far cheaper than closing 65536 numbers one by one)."""
    if close_range and _libc.syscall(_SYS_CLOSE_RANGE, ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                                     ctypes.c_uint(0)) == 0:
        return
    for name in os.listdir("/proc/self/fd"):
        if int(name) >= first:
            try:
                os.close(int(name))
            except OSError:
                pass


def _interpreter_dirs() -> set[str]:
    dirs = {os.path.realpath(p) for p in sys.path if p and os.path.isdir(p)}
    dirs.add(os.path.dirname(os.path.realpath(sys.executable)))
    return {d for d in dirs if not any(d.startswith(o + os.sep) for o in dirs)}


def _blocked_ancestor(path: str) -> str | None:
    """The first directory on `path` that other users may not enter (e.g. a 0700 /root), or None."""
    current = os.sep
    for part in path.strip(os.sep).split(os.sep):
        current = os.path.join(current, part)
        try:
            if not os.stat(current).st_mode & stat.S_IXOTH:
                return current
        except OSError:
            return None
    return None


def _interpreter_hidden() -> bool:
    return any(_blocked_ancestor(d) for d in _interpreter_dirs())


def _expose_interpreter() -> bool:
    """Inside the worker's mount namespace, covers each closed ancestor of the interpreter's directories
    (e.g. /root) with an empty tmpfs and binds just those directories back, so an unprivileged program
    can import the standard library and site-packages but sees nothing else under that ancestor."""
    by_ancestor: dict[str, list[str]] = {}
    for d in _interpreter_dirs():
        ancestor = _blocked_ancestor(d)
        if ancestor:
            by_ancestor.setdefault(ancestor, []).append(d)
    for ancestor, dirs in by_ancestor.items():
        handles = [(d, os.open(d, os.O_PATH | os.O_DIRECTORY)) for d in dirs]
        try:
            if not _mount(b"tmpfs", ancestor.encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV, b"size=1m,mode=0755"):
                return False
            for d, fd in handles:
                os.makedirs(d, mode=0o755, exist_ok=True)
                if not _mount(f"/proc/self/fd/{fd}".encode(), d.encode(), None, _MS_BIND | _MS_REC, None):
                    return False
        finally:
            for _, fd in handles:
                os.close(fd)
    return True


def _parse_child_message(res: bytes) -> dict | None:
    try:
        message = json.loads(res.decode("utf-8")) if res else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return message if isinstance(message, dict) else None


def _exit_reason(exit_code: int) -> tuple[str, str | None]:
    """The sandbox's reason for a child that ended without reporting."""
    if exit_code >= 0:
        return f"program exited with code {exit_code} before finishing", None
    sig = -exit_code
    if sig == signal.SIGXCPU:
        return "cpu time limit exceeded", "cpu"
    if sig == signal.SIGXFSZ:
        return "file size limit exceeded", "disk"
    try:
        name = signal.Signals(sig).name
    except ValueError:
        name = "?"
    return f"killed by signal {sig} ({name})", None


def _kill_quietly(kill) -> None:
    try:
        kill()
    except (ProcessLookupError, PermissionError):
        pass


def _make_writable(func, path, _exc) -> None:
    """rmtree's error handler: opens up a directory the program made unwritable and retries."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        func(path)
    except OSError:
        pass


def _remove_dir(path: str) -> None:
    """Removes a directory tree the program may have made unreadable (chmod 000) or full of odd names.
    An empty one (the usual case) needs no shutil, which stays out of the worker until a program leaves a tree."""
    try:
        os.rmdir(path)
    except OSError:
        import shutil
        shutil.rmtree(path, onerror=_make_writable)


def _remove_tree(path: str) -> None:
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            _remove_dir(path)
        else:
            os.unlink(path)


def _empty_dir(path: str, owner: int | None = None) -> None:
    """Removes the entries of `path` (only those owned by `owner` if given)."""
    try:
        entries = list(os.scandir(path))
    except OSError:
        return
    for entry in entries:
        try:
            if owner is not None and entry.stat(follow_symlinks=False).st_uid != owner:
                continue
            if entry.is_dir(follow_symlinks=False):      # the listing's file type: no extra stat calls
                _remove_dir(entry.path)
            else:
                os.unlink(entry.path)
        except OSError:
            pass


def _temp_parent() -> str:
    """Where the worker keeps its files: tempfile.gettempdir()'s choice for the worker's scrubbed environment
    (no TMPDIR), without importing tempfile."""
    for d in ("/tmp", "/var/tmp", "/usr/tmp"):
        if os.path.isdir(d) and os.access(d, os.W_OK | os.X_OK):
            return d
    return os.getcwd()


def _private_dir(parent: str) -> str:
    """A new 0700 directory with an unguessable name under `parent` (what tempfile.mkdtemp makes)."""
    while True:
        path = os.path.join(parent, f"rstar_sandbox_{os.urandom(6).hex()}")
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue


def _add_site_dirs(dirs: Sequence[str]) -> None:
    """What `site` gives a program, for a worker started with -S: the site-packages directories, the
    directories their .pth files list, and the exit()/quit() builtins. A .pth file's `import` lines (editable
    install hooks and the like) are not run: programs need the installed packages, not those hooks."""
    import _sitebuiltins
    builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
    builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    for d in dirs:
        if d in sys.path or not os.path.isdir(d):
            continue
        sys.path.append(d)
        for name in sorted(n for n in os.listdir(d) if n.endswith(".pth")):
            try:
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    lines = f.read().splitlines()
            except (OSError, UnicodeDecodeError):
                continue
            for line in lines:
                line = line.strip()
                if not line or line.startswith(("#", "import ", "import\t")):
                    continue
                path = os.path.join(d, line)
                if os.path.isdir(path) and path not in sys.path:
                    sys.path.append(path)


def _worker_main() -> None:
    """Entry point of a worker process (see the module docstring)."""
    config = json.loads(sys.argv[1])
    _add_site_dirs(config["site_dirs"])
    os.environ.update(_child_env(_temp_parent()))
    _Worker(config).serve()



if __name__ == "__main__":
    _worker_main()

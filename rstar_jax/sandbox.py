"""Isolated execution of model-written Python: a pool of pre-started workers that fork a fresh child per program.

Why: search verifies millions of step programs. The reference `exec`s them in shared globals with no limits;
here every program gets a clean interpreter (a fork of a warmed worker), OS limits, a private working
directory, a scrubbed environment, no network, an unprivileged uid when started as root, and a wall-clock
timeout enforced from outside. Everything a program starts is killed when it finishes.

Usage::

    with Sandbox(workers=2, timeout_s=5.0, memory_mb=1024) as sb:
        sb.run("print(1 + 1)").stdout                  # '2\\n'
        sb.run_many(codes)                              # list[ExecResult], same order as `codes`
        batch = sb.submit_many(codes)                   # returns at once; programs run in the background
        ...                                             # keep decoding
        results = batch.result()                        # list[ExecResult], same order

Process layout: Sandbox (caller, may have imported jax) --spawn--> worker (rstar_jax/sandbox_worker.py in a
clean ``python -I -S`` interpreter; pre-imports common modules, enters private network/mount namespaces, acts as
child subreaper) --fork per program--> child (sets limits, drops to the worker's uid, runs the code).
The worker imports only light standard-library modules, since everything it holds is copied by every fork.
Each pool thread sends its worker up to MAX_BATCH queued programs in one message, and the next message as
soon as the worker has read the last one; the worker runs them one after another, each in its own fresh
fork, and streams back one result per program.

Layers, chosen per worker at startup and logged once per pool (`Sandbox.layers`):
  network     "namespace": the worker enters an empty network namespace (no interface is up, not even
              loopback). Otherwise "deny": an audit hook in each child refuses every socket operation.
  filesystem  "private tmpfs": a private mount namespace puts fresh tmpfs mounts over /tmp, /var/tmp,
              /dev/shm and /run/lock (wiped after every program) and hides closed directories such as a
              0700 /root except for the interpreter's own directories. "uid + sweep": no mount namespace,
              so files the program's uid left in those shared directories are removed afterwards. "deny":
              programs keep the worker's uid, so the audit hook refuses writes outside the working
              directory, new processes, signals, rlimit changes, ctypes and other processes' /proc files.
  user        when root: each worker slot owns a uid from UID_BASE up (claimed with an flock so pools on
              one machine never share one); programs run as it, with no_new_privs, so they cannot raise
              their limits, write root's files or signal the worker, and RLIMIT_NPROC bounds one program.
Limits per program: wall clock (the worker SIGKILLs the program's process group, the pool kills a worker
that stops answering), RLIMIT_AS (memory_mb on top of the worker's image), RLIMIT_CPU, RLIMIT_FSIZE,
RLIMIT_NOFILE, RLIMIT_NPROC, no core files. After each program the worker, a child subreaper, SIGKILLs
whatever the program left running (every process of its uid, or every descendant) and reaps it.

Result semantics: `stdout`/`stderr` keep the first 512 + last 512 characters (`cap_output`); `error` is
the traceback's last line ("NameError: name 'x' is not defined"), None for success or sys.exit(0), or the
sandbox's reason ("timeout after 5s", "memory limit exceeded (MemoryError)", "killed by signal 11
(SIGSEGV)", "program exited with code 3 before finishing" for os._exit, whose unflushed output is lost as
in any Python). Each program starts from the same warmed state; `random` is reseeded in every child by
Python's fork hook, numpy's global generator is not.
"""
from __future__ import annotations

import concurrent.futures
import fcntl
import functools
import json
import logging
import marshal
import math
import os
import queue
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from rstar_jax import sandbox_worker
from rstar_jax.sandbox_worker import (OUTPUT_HEAD, OUTPUT_TAIL, _STARTED, _frame, _kill_quietly, _recv, _write_all,
                                      cap_output)

__all__ = ["BatchHandle", "ExecResult", "Layers", "Limits", "Sandbox", "cap_output"]

log = logging.getLogger(__name__)

# Modules most step programs import; pre-importing them in the worker makes `import sympy` in a program free.
DEFAULT_PRELOAD = ("math", "cmath", "fractions", "decimal", "itertools", "functools", "collections", "re",
                   "random", "statistics")
# Heavy modules a worker imports only once a program names them: a worker holding sympy forks ~5x slower
# (15 ms vs 3 ms on the 2-core dev box), which programs that never use it should not pay; a program that
# does use it pays the slower fork instead of a ~1 s import.
DEFAULT_WARM_ON_DEMAND = ("numpy", "sympy", "scipy", "mpmath")
# Each worker slot gets its own uid from this range, so programs in different workers cannot signal or
# read each other and the per-uid process limit bounds one program, not the whole pool.
UID_BASE = 200_000
UID_SPAN = 4096
UID_LOCK_DIR = os.path.join(tempfile.gettempdir(), "rstar_jax_sandbox_uids")
WORKER_START_TIMEOUT_S = 120.0
BACKSTOP_GRACE_S = 10.0      # extra time the pool gives a worker past the program timeout before killing it
MAX_BATCH = 8                # programs the pool sends a worker in one message
MAX_BATCH_CHARS = 1 << 14    # ...and their code in all, so a message (JSON-escaped) usually fits a 64 KiB pipe


@dataclass(frozen=True)
class ExecResult:
    """Outcome of one program. `error` is the traceback's last line or the sandbox's reason; None on success."""
    stdout: str
    error: str | None = None
    timed_out: bool = False
    stderr: str = ""
    exit_code: int | None = None   # the child's exit status; negative = killed by that signal
    duration_s: float = 0.0
    limit: str | None = None       # which limit stopped it: timeout, memory, cpu, output, worker


@dataclass(frozen=True)
class Limits:
    """Per-program resource limits (see Sandbox for the meaning of each)."""
    timeout_s: float = 5.0
    memory_mb: int = 1024
    disk_mb: int = 64
    max_processes: int = 32
    max_open_files: int = 64
    output_head: int = OUTPUT_HEAD
    output_tail: int = OUTPUT_TAIL

    def __post_init__(self) -> None:
        if not (self.timeout_s > 0 and math.isfinite(self.timeout_s)):
            raise ValueError(f"Sandbox: timeout_s must be a positive number of seconds, got {self.timeout_s!r}")
        for name in ("memory_mb", "disk_mb", "max_processes", "max_open_files"):
            if getattr(self, name) < 1:
                raise ValueError(f"Sandbox: {name} must be >= 1, got {getattr(self, name)!r}")
        if self.max_open_files < 8:
            raise ValueError(f"Sandbox: max_open_files must be >= 8 (the interpreter needs a few), "
                             f"got {self.max_open_files}")


@dataclass(frozen=True)
class Layers:
    """Which isolation layers a worker managed to turn on (decided at startup, logged once per pool)."""
    network: str      # "namespace" (empty network namespace) or "deny" (audit hook refuses sockets)
    filesystem: str   # "private tmpfs", "uid + sweep" or "deny" (audit hook refuses writes outside the workdir)
    user: str         # "uid N" or "unchanged"
    no_new_privs: bool
    subreaper: bool


# What `python -I -S -c` runs in a new worker: the worker module's code object, read from the request pipe as
# marshal bytes, executed as __main__. Compiling the module's source in the worker (`python sandbox_worker.py`)
# would leave ~3.6 MB of parser memory there, and `site` (skipped by -S; the worker adds the site-packages
# directories itself) ~2 MB more: memory that every fork copies and every exit unmaps.
_WORKER_BOOT = """
import marshal, os, sys, types
size, sys.argv = int(sys.argv[1]), sys.argv[2:]
data = bytearray()
while len(data) < size:
    chunk = os.read(0, size - len(data))
    if not chunk:
        raise SystemExit("sandbox worker: the pool closed the pipe before sending the worker's code")
    data += chunk
code = marshal.loads(data)
del data, chunk
main = types.ModuleType("__main__")
main.__file__ = sys.argv[0]
sys.modules["__main__"] = main
exec(code, main.__dict__)
"""


def _site_dirs() -> list[str]:
    """The interpreter's site-packages directories (no user site, as under -I), for the worker to add."""
    try:
        return [d for d in site.getsitepackages() if os.path.isdir(d)]
    except AttributeError:        # some embedded or older virtualenv site modules lack it
        return [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]


@functools.cache
def _worker_code() -> bytes:
    """The worker module's code object as marshal bytes (from its .pyc when one is cached)."""
    return marshal.dumps(sandbox_worker.__spec__.loader.get_code(sandbox_worker.__name__))


# ---------------------------------------------------------------- the pool (runs in the caller)

@dataclass
class _Job:
    code: str
    timeout_s: float
    future: concurrent.futures.Future
    seq: int = 0          # numbers the job within its slot, for the worker's start records
    resent: bool = False  # a worker died before starting it once already


class BatchHandle:
    """Programs submitted together; `result()` waits for all of them and returns them in submission order."""

    def __init__(self, futures: list[concurrent.futures.Future]):
        self.futures = futures

    def done(self) -> bool:
        """True once every program of the batch has a result."""
        return all(f.done() for f in self.futures)

    def result(self, timeout: float | None = None) -> list[ExecResult]:
        """Waits (up to `timeout` seconds in all) and returns one ExecResult per submitted program."""
        end = None if timeout is None else time.monotonic() + timeout
        return [f.result(None if end is None else max(0.0, end - time.monotonic())) for f in self.futures]


@dataclass
class _Slot:
    """One worker process, its uid, and the thread that feeds it jobs."""
    index: int
    uid: int | None
    proc: subprocess.Popen | None = None
    layers: Layers | None = None
    ready: threading.Event = field(default_factory=lambda: threading.Event())
    start_error: BaseException | None = None
    restarts: int = 0
    started_r: int | None = None     # read end of the worker's start records (non-blocking)
    seq: int = 0
    pipe_size: int = 0               # capacity of the worker's request pipe


class Sandbox:
    """A pool of pre-started workers that run untrusted Python programs, each in a fresh isolated child.

    Args:
      workers: worker processes (default: number of CPU cores).
      timeout_s: wall-clock limit per program; the whole process group is killed when it passes.
      memory_mb: address space a program may add on top of the pre-imported interpreter.
      disk_mb: largest file a program may write (and size of each private tmpfs).
      max_processes: processes + threads a program may have at once (enforced when it runs as its own uid).
      max_open_files: file descriptors a program may hold.
      preload: modules imported once in each worker, so programs import them for free.
      warm_on_demand: modules a worker imports the first time a program's text names them.
      namespaces: True = require private network+mount namespaces, False = never use them, None = if allowed.
      drop_privileges: when root, run programs as a dedicated unprivileged uid per worker (None = when root).
    """

    def __init__(self, workers: int | None = None, timeout_s: float = 5.0, memory_mb: int = 1024, *,
                 disk_mb: int = 64, max_processes: int = 32, max_open_files: int = 64,
                 output_head: int = OUTPUT_HEAD, output_tail: int = OUTPUT_TAIL,
                 preload: Sequence[str] = DEFAULT_PRELOAD, warm_on_demand: Sequence[str] = DEFAULT_WARM_ON_DEMAND,
                 namespaces: bool | None = None,
                 drop_privileges: bool | None = None):
        workers = (os.cpu_count() or 1) if workers is None else workers
        if not isinstance(workers, int) or workers < 1:
            raise ValueError(f"Sandbox: workers must be a positive int, got {workers!r}")
        self.limits = Limits(timeout_s=float(timeout_s), memory_mb=memory_mb, disk_mb=disk_mb,
                             max_processes=max_processes, max_open_files=max_open_files,
                             output_head=output_head, output_tail=output_tail)
        self._preload = list(preload)
        self._warm_on_demand = list(warm_on_demand)
        self._namespaces = namespaces
        want_uid = os.geteuid() == 0 if drop_privileges is None else drop_privileges
        if want_uid and os.geteuid() != 0:
            raise PermissionError("Sandbox: drop_privileges=True needs root (it switches programs to other uids)")
        self._jobs: queue.Queue[_Job | None] = queue.Queue()
        self._closed = False
        self._lock_fds: list[int] = []
        self._slots = [_Slot(i, self._claim_uid() if want_uid else None) for i in range(workers)]
        self._threads = [threading.Thread(target=self._serve_slot, args=(s,), daemon=True,
                                          name=f"sandbox-slot-{s.index}") for s in self._slots]
        for t in self._threads:
            t.start()
        self._wait_ready()

    # -- public API

    @property
    def layers(self) -> Layers:
        """Isolation layers active in the workers (the same for all of them)."""
        return self._slots[0].layers

    def submit(self, code: str, timeout_s: float | None = None) -> concurrent.futures.Future:
        """Queues one program; the future resolves to its ExecResult."""
        if not isinstance(code, str):
            raise TypeError(f"Sandbox.submit: code must be str, got {type(code).__name__}")
        if self._closed:
            raise RuntimeError("Sandbox.submit: the sandbox is closed")
        timeout = self.limits.timeout_s if timeout_s is None else float(timeout_s)
        if not (timeout > 0 and math.isfinite(timeout)):
            raise ValueError(f"Sandbox.submit: timeout_s must be a positive number, got {timeout_s!r}")
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._jobs.put(_Job(code, timeout, future))
        return future

    def submit_many(self, codes: Sequence[str], timeout_s: float | None = None) -> BatchHandle:
        """Queues all programs at once and returns immediately; `handle.result()` gives results in order."""
        for i, code in enumerate(codes):
            if not isinstance(code, str):
                raise TypeError(f"Sandbox.submit_many: codes[{i}] must be str, got {type(code).__name__}")
        return BatchHandle([self.submit(code, timeout_s) for code in codes])

    def run(self, code: str, timeout_s: float | None = None) -> ExecResult:
        """Runs one program and waits for its result."""
        return self.submit(code, timeout_s).result()

    def run_many(self, codes: Sequence[str], timeout_s: float | None = None) -> list[ExecResult]:
        """Runs programs concurrently on all workers; results come back in the order of `codes`."""
        return self.submit_many(codes, timeout_s).result()

    def close(self) -> None:
        """Stops the workers (after the programs already running) and fails programs still queued."""
        if self._closed:
            return
        self._closed = True
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(RuntimeError("Sandbox closed before the program ran"))
        for _ in self._slots:
            self._jobs.put(None)
        for t in self._threads:
            t.join()
        for fd in self._lock_fds:
            os.close(fd)
        self._lock_fds.clear()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def restarts(self) -> int:
        """How many workers have been replaced after dying or hanging (a health signal for long runs)."""
        return sum(s.restarts for s in self._slots)

    def worker_pids(self) -> list[int]:
        """Process ids of the live workers (for monitoring and tests)."""
        return [s.proc.pid for s in self._slots if s.proc is not None and s.proc.poll() is None]

    # -- startup

    def _claim_uid(self) -> int:
        """Takes a uid nobody else on this machine uses, held by an flock for the pool's lifetime."""
        os.makedirs(UID_LOCK_DIR, mode=0o700, exist_ok=True)
        for uid in range(UID_BASE, UID_BASE + UID_SPAN):
            fd = os.open(os.path.join(UID_LOCK_DIR, str(uid)), os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._lock_fds.append(fd)
            return uid
        raise RuntimeError(f"Sandbox: all {UID_SPAN} sandbox uids from {UID_BASE} are in use")

    def _wait_ready(self) -> None:
        for slot in self._slots:
            slot.ready.wait()
        failed = [s for s in self._slots if s.start_error is not None]
        if failed:
            error = failed[0].start_error
            self.close()
            raise RuntimeError(f"Sandbox: worker {failed[0].index} failed to start: {error}") from error
        log.info("sandbox: %d workers ready; network=%s filesystem=%s user=%s no_new_privs=%s subreaper=%s",
                 len(self._slots), self.layers.network, self.layers.filesystem,
                 "per-worker uids" if self._slots[0].uid is not None and self.layers.user != "unchanged"
                 else self.layers.user, self.layers.no_new_privs, self.layers.subreaper)
        if self.layers.network == "deny" or self.layers.filesystem == "deny":
            log.warning("sandbox: OS isolation unavailable here; using the audit-hook deny layer for %s",
                        ", ".join(k for k in ("network", "filesystem") if getattr(self.layers, k) == "deny"))

    def _start_worker(self, slot: _Slot) -> None:
        """Spawns a clean interpreter running this file as a worker (never a fork of the caller, which may
        hold jax threads) and waits for its ready message listing the layers it got."""
        started_r, started_w = os.pipe()
        os.set_blocking(started_r, False)
        if started_w < 3:                     # a caller without stdio: keep the worker's 0-2 for its pipes
            low, started_w = started_w, fcntl.fcntl(started_w, fcntl.F_DUPFD_CLOEXEC, 3)
            os.close(low)
        config = {"limits": asdict(self.limits), "uid": slot.uid, "preload": self._preload,
                  "warm_on_demand": self._warm_on_demand,
                  "namespaces": self._namespaces, "started_fd": started_w, "site_dirs": _site_dirs()}
        try:
            slot.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _WORKER_BOOT, str(len(_worker_code())),
                 os.path.abspath(sandbox_worker.__file__), json.dumps(config)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0, start_new_session=True,
                pass_fds=(started_w,), env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"})
        except BaseException:
            os.close(started_r)
            raise
        finally:
            os.close(started_w)
        slot.started_r = started_r
        self._write_request(slot, _worker_code())
        slot.pipe_size = fcntl.fcntl(slot.proc.stdin.fileno(), fcntl.F_GETPIPE_SZ)
        try:
            hello = _recv(slot.proc.stdout.fileno(), time.monotonic() + WORKER_START_TIMEOUT_S)
        except TimeoutError:
            hello = None
        if hello is None or "ready" not in hello:
            code = self._stop_worker(slot)
            raise RuntimeError(f"worker exited during startup (exit code {code})")
        slot.layers = Layers(**hello["ready"])

    def _stop_worker(self, slot: _Slot) -> int | None:
        """Kills the worker's whole session and reaps it; returns its exit code."""
        proc, slot.proc = slot.proc, None
        if proc is None:
            return None
        _kill_quietly(lambda: os.killpg(proc.pid, signal.SIGKILL))
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            stream.close()
        if slot.started_r is not None:
            os.close(slot.started_r)
            slot.started_r = None
        return code

    # -- dispatch

    def _serve_slot(self, slot: _Slot) -> None:
        """Thread body: starts the slot's worker (so its death signal is tied to this long-lived thread),
        then feeds it jobs until close()."""
        try:
            self._start_worker(slot)
        except BaseException as e:  # noqa: BLE001 - reported by the constructor
            slot.start_error = e
            slot.ready.set()
            return
        slot.ready.set()
        while True:
            batch, stop = self._take_batch()
            if batch:
                self._execute_batch(slot, batch)
            if stop:
                break
        self._shutdown_worker(slot)

    def _take_batch(self, wait: bool = True) -> tuple[list[_Job], bool]:
        """Waits for a job, then takes up to MAX_BATCH queued ones, leaving the other workers their share.
        Returns the jobs still wanted (not cancelled) and whether close() asked this slot to stop.
        With wait=False (filling the pipeline) it takes jobs only while the others' share stays queued,
        and leaves a stop request in the queue for the next call."""
        jobs: list[_Job] = []
        share = self._jobs.qsize() // (2 * len(self._slots))
        if not wait and share == 0:
            return jobs, False
        item = self._jobs.get() if wait else self._jobs.get_nowait()
        limit = min(MAX_BATCH, share + (1 if wait else 0))
        chars = 0
        while item is not None:
            if item.future.set_running_or_notify_cancel():
                jobs.append(item)
                chars += len(item.code)
            if len(jobs) >= limit or chars >= MAX_BATCH_CHARS:
                return jobs, False
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return jobs, False
        if not wait:
            self._jobs.put(None)
            return jobs, False
        return jobs, True

    def _execute_batch(self, slot: _Slot, jobs: list[_Job]) -> None:
        """Runs jobs on the slot's worker: one message out, one result back per program, in order. If the
        worker dies or hangs, the program it was running gets that as its result and the worker is replaced;
        programs it had not started are sent to the new worker (each at most once more)."""
        while jobs:
            if slot.proc is None or slot.proc.poll() is not None:
                self._replace_worker(slot, "found dead before the program started")
                if slot.proc is None:
                    for job in jobs:
                        job.future.set_result(ExecResult(stdout="", error="sandbox worker could not be restarted",
                                                         limit="worker"))
                    return
            jobs = self._run_on_worker(slot, jobs)

    @staticmethod
    def _request(slot: _Slot, jobs: list[_Job]) -> bytes:
        """Numbers jobs for the worker's start records and frames them as one message."""
        for job in jobs:
            slot.seq += 1
            job.seq = slot.seq
        return _frame({"batch": [{"code": j.code, "timeout_s": j.timeout_s, "seq": j.seq} for j in jobs]})

    @staticmethod
    def _write_request(slot: _Slot, request: bytes) -> None:
        try:
            _write_all(slot.proc.stdin.fileno(), request)
        except OSError:
            pass                                         # a dead worker: the next read says so

    def _run_on_worker(self, slot: _Slot, jobs: list[_Job]) -> list[_Job]:
        """Sends jobs to the worker and resolves them as results arrive; returns the jobs to send again.

        Pipelined: once the worker has read a message (its first reply says so), the next queued jobs go
        out at once, so the worker starts them without waiting for this thread. A message sent then must fit
        the (empty) request pipe, else the write could block while the worker blocks writing results; a
        larger one is held until the worker has answered everything before it."""
        start = time.monotonic()
        self._write_request(slot, self._request(slot, jobs))
        newest = 0                                       # where the newest message sent starts in `jobs`
        held: list[_Job] = []                            # taken and framed (held_request), not yet sent
        held_request = b""
        i = 0
        while i < len(jobs) or held:
            if i == len(jobs):                           # all answered: the worker is waiting to read
                newest = len(jobs)
                self._write_request(slot, held_request)
                jobs, held = jobs + held, []
            job = jobs[i]
            try:
                reply = _recv(slot.proc.stdout.fileno(), start + job.timeout_s + BACKSTOP_GRACE_S)
            except TimeoutError:
                reply, reason, timed_out = None, f"timeout after {job.timeout_s:g}s (worker unresponsive)", True
            except OSError as e:
                reply, reason, timed_out = None, f"sandbox worker died ({e.__class__.__name__})", False
            else:
                reason, timed_out = "sandbox worker died while running the program", False
            if reply is None:
                return self._worker_failed(slot, jobs[i:], reason, timed_out, start) + held
            job.future.set_result(ExecResult(**reply))
            start = time.monotonic()                     # the worker starts the next program right away
            if i == newest and not held:
                more, _ = self._take_batch(wait=False)
                if more:
                    request = self._request(slot, more)
                    if len(request) <= slot.pipe_size:
                        self._write_request(slot, request)
                        newest = len(jobs)
                        jobs = jobs + more
                    else:
                        held, held_request = more, request
            i += 1
        self._read_started(slot)                         # keeps the side pipe from filling up
        return []

    def _worker_failed(self, slot: _Slot, jobs: list[_Job], reason: str, timed_out: bool,
                       start: float) -> list[_Job]:
        """The worker died or hung while jobs[0] was next: kills the program it had started (if any), replaces
        the worker, and returns the jobs to send again."""
        seq, pid = self._read_started(slot)
        if pid and seq == jobs[0].seq:                   # never an earlier program's group: its id may be reused
            _kill_quietly(lambda: os.killpg(pid, signal.SIGKILL))
        code = self._replace_worker(slot, reason if seq == jobs[0].seq else "died before starting the program")
        if seq != jobs[0].seq:                           # it had not started jobs[0]: nothing ran yet
            retry = [j for j in jobs if not j.resent]
            for job in jobs:
                if job.resent:
                    job.future.set_result(ExecResult(stdout="", error="sandbox worker died twice before starting "
                                                     "the program", limit="worker"))
                job.resent = True
            return retry
        jobs[0].future.set_result(ExecResult(
            stdout="", error=reason if timed_out else f"{reason}; exit code {code}", timed_out=timed_out,
            duration_s=time.monotonic() - start, limit="worker"))
        return jobs[1:]

    def _read_started(self, slot: _Slot) -> tuple[int, int]:
        """The last (seq, pid) start record the slot's worker wrote, (0, 0) if none is waiting."""
        last, data = (0, 0), b""
        while slot.started_r is not None:
            try:
                chunk = os.read(slot.started_r, 1 << 12)
            except BlockingIOError:
                break
            if not chunk:
                break
            data += chunk
        if len(data) >= _STARTED.size:
            end = len(data) - len(data) % _STARTED.size
            last = _STARTED.unpack(data[end - _STARTED.size:end])
        return last

    def _replace_worker(self, slot: _Slot, reason: str) -> int | None:
        """Kills the slot's worker (if any) and starts a new one; returns the old one's exit code."""
        code = self._stop_worker(slot)
        if code is not None:
            slot.restarts += 1
            log.warning("sandbox: worker %d replaced (%s; exit code %s)", slot.index, reason, code)
        try:
            self._start_worker(slot)
        except (OSError, RuntimeError) as e:
            log.error("sandbox: worker %d could not be restarted: %s", slot.index, e)
        return code

    def _shutdown_worker(self, slot: _Slot) -> None:
        """Closes the worker's request pipe (it exits on EOF and removes its files), then reaps it."""
        if slot.proc is None:
            return
        slot.proc.stdin.close()
        try:
            slot.proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass
        self._stop_worker(slot)


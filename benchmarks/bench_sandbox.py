"""Programs/s for typical step programs: the sandbox pool vs a fresh subprocess per program vs in-process exec.

The in-process column is the reference's way (exec with a timeout, no isolation): an upper bound on speed,
not an option. The last line is `sandbox ratio: X` = pool / subprocess-per-program (medians over repeats).
The three sides take turns within each repeat, so a change in machine load hits them alike; every side must
print the same outputs for the same programs. The load average before and after is printed: on a shared
machine the baseline slows more than the pool under load, which inflates the ratio.

    .venv/bin/python benchmarks/bench_sandbox.py [--repeats 5] [--programs 400] [--with-sympy]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from rstar_jax.sandbox import Sandbox, cap_output  # noqa: E402

# Shaped like rStar step programs: the code of all ancestor steps plus the new one, ending in a print.
STEP_PROGRAMS = (
    "# Step 1: total apples\napples = 3 * 12\n# Step 2: eaten\nleft = apples - 7\nprint(left)",
    "from fractions import Fraction\n# Step 1: share\np = Fraction(3, 8) + Fraction(1, 6)\nprint(p)",
    "import math\n# Step 1: ways to choose\nways = math.comb(10, 4)\n# Step 2: probability\nprint(ways / 2**10)",
    "# Step 1: sum of squares\ns = sum(i * i for i in range(1, 101))\nprint(s)",
    "import math\n# Step 1: hypotenuse\nc = math.sqrt(5**2 + 12**2)\n# Step 2: perimeter\nprint(5 + 12 + c)",
    "# Step 1: primes below 200\nprimes = [n for n in range(2, 200) if all(n % d for d in range(2, int(n**0.5) + 1))]\n"
    "print(len(primes), primes[-1])",
    "# Step 1: solve 3x + 7 = 25\nx = (25 - 7) / 3\n# Step 2: check\nassert 3 * x + 7 == 25\nprint(x)",
    "import itertools\n# Step 1: count arrangements\nn = sum(1 for p in itertools.permutations('abcde') if p[0] != 'a')\nprint(n)",
)
SYMPY_PROGRAMS = (
    "from sympy import symbols, solve\nx = symbols('x')\nprint(solve(x**2 - 5*x + 6, x))",
    "import sympy as sp\nprint(sp.factorint(360))",
)


def subprocess_batch(workers: int, timeout_s: float) -> Callable[[Sequence[str]], list[str]]:
    """A fresh `python -c` per program, `workers` at a time (the naive isolated way)."""
    def one(code: str) -> str:
        try:
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s,
                                  env={"PATH": os.environ.get("PATH", ""), "OPENBLAS_NUM_THREADS": "1"})
            return cap_output(done.stdout)
        except subprocess.TimeoutExpired:
            return ""

    def batch(codes: Sequence[str]) -> list[str]:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, codes))
    return batch


def in_process_batch(timeout_s: float) -> Callable[[Sequence[str]], list[str]]:
    """The reference's way: exec in this process with stdout redirected and an alarm as the timeout."""
    def on_alarm(signum, frame):
        raise TimeoutError

    def one(code: str) -> str:
        buf = io.StringIO()
        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
        try:
            with contextlib.redirect_stdout(buf):
                exec(code, {"__name__": "__main__"})
        except BaseException:  # noqa: BLE001 - the program's failure is its result
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return cap_output(buf.getvalue())

    return lambda codes: [one(c) for c in codes]


def timed(run_batch: Callable[[Sequence[str]], list[str]], codes: Sequence[str]) -> tuple[float, list[str]]:
    """Programs/s for one batch, and its outputs."""
    start = time.perf_counter()
    outputs = run_batch(codes)
    return len(codes) / (time.perf_counter() - start), outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", "--rounds", dest="repeats", type=int, default=5,
                        help="timed batches per side (the sides take turns); medians are reported")
    parser.add_argument("--programs", type=int, default=400, help="programs per batch for pool and in-process")
    parser.add_argument("--subprocess-programs", type=int, default=48, help="programs per batch for the baseline")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout-s", type=float, default=5.0)
    parser.add_argument("--with-sympy", action="store_true", help="also time sympy programs (slow baseline)")
    args = parser.parse_args()

    suites = [("step programs", STEP_PROGRAMS)]
    if args.with_sympy:
        suites.insert(0, ("sympy step programs", SYMPY_PROGRAMS))
    print(f"{args.workers} workers, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"median of {args.repeats} repeats")
    print(f"{'programs':<22}{'sandbox pool':>14}{'subprocess':>14}{'in-process':>14}{'pool/subproc':>14}")
    ratio = 0.0
    for name, corpus in suites:
        def corpus_of(n: int) -> list[str]:
            return [corpus[i % len(corpus)] for i in range(n)]
        pool_codes = corpus_of(args.programs)
        base_codes = corpus_of(max(2, args.subprocess_programs // (20 if "sympy" in name else 1)))
        # a pool per suite: a worker that has warmed sympy forks slower for every later program
        with Sandbox(workers=args.workers, timeout_s=args.timeout_s) as sb:
            sb.run_many(pool_codes[:4 * args.workers])                      # warm on-demand modules
            sides = {"pool": (lambda c: [r.stdout for r in sb.run_many(c)], pool_codes),
                     "subprocess": (subprocess_batch(args.workers, args.timeout_s), base_codes),
                     "in-process": (in_process_batch(args.timeout_s), pool_codes)}
            rates: dict[str, list[float]] = {side: [] for side in sides}
            outputs: dict[str, list[str]] = {}
            for _ in range(args.repeats):
                for side, (run_batch, codes) in sides.items():
                    rate, out = timed(run_batch, codes)
                    rates[side].append(rate)
                    if outputs.setdefault(side, out) != out:
                        raise RuntimeError(f"{side}: outputs changed between repeats")
        n = len(base_codes)
        if not (outputs["pool"] == outputs["in-process"] and outputs["subprocess"] == outputs["pool"][:n]):
            raise RuntimeError("the sides printed different outputs for the same programs")
        pool, base, local = (statistics.median(rates[side]) for side in ("pool", "subprocess", "in-process"))
        ratio = pool / base
        print(f"{name:<22}{pool:>14.1f}{base:>14.1f}{local:>14.1f}{ratio:>13.1f}x")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(f"sandbox ratio: {ratio:.1f}")


if __name__ == "__main__":
    main()

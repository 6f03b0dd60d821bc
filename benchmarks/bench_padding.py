"""Padding in the decode batch: the demo's search and evaluation sampling with the row buckets of before
(powers of two, a compiled bucket reused up to 4x a call's rows) and with the finer grid (1.5x powers
of two too, reused up to 1.5x).

Needs a finished `make demo` run (`--workdir`): the search uses its round-`--search-round` policy on the
first `--problems` pool problems with the demo's search settings; the sampling uses its last round's
policy on `--problems` fresh-seed (dev) problems, greedy and 4 samples at 0.3, as the evaluation does.
Every variant runs once to compile its shapes, then `--repeats` times in turn; the table shows medians,
the share of decoded row-steps that were filler rows (padding to the bucket) or rows already stopped,
and checks that both give the same trees and samples. `sampling ratio: X` (sampling time), last line
`padding ratio: X` (search decode time), both powers of two / grid.

    .venv/bin/python benchmarks/bench_padding.py --workdir runs/demo [--problems 192 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VARIANTS = {"powers of two, 4x reuse": (False, 4.0), "1.5x grid": (True, 1.5)}  # (FINE_ROW_GRID, ROW_REUSE)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--search-round", type=int, default=2)
    p.add_argument("--problems", type=int, default=192)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from configs import demo
    from rstar_jax import generate as gen
    from rstar_jax import models
    from rstar_jax.data import toyworld
    from rstar_jax.data.problems import load_problems
    from rstar_jax.evaluate import sample_solutions
    from rstar_jax.mcts.lm_policy import LMPolicy
    from rstar_jax.mcts.search import LockstepSearch
    from rstar_jax.sandbox import Sandbox
    from rstar_jax.tokenizer import StepTokenizer

    config = demo.get_config()
    last = max(int(d.split("_")[1]) for d in os.listdir(args.workdir) if d.startswith("round_")
               and os.path.isdir(os.path.join(args.workdir, d, "policy", "export")))
    policy_dir = lambda r: os.path.join(args.workdir, f"round_{r}", "policy", "export")
    if not os.path.isdir(policy_dir(args.search_round)):
        raise SystemExit(f"bench_padding: no policy at {policy_dir(args.search_round)}; run `make demo` first")
    tok = StepTokenizer.from_file(os.path.join(args.workdir, "world"))
    pool = load_problems(os.path.join(args.workdir, "world", "pool.jsonl"))[: args.problems]
    dev = [t.to_problem() for t in toyworld.splits(777, n_train=0, n_pool=0, n_heldout=args.problems)["heldout"]]
    searcher, sampler = models.load_hf(policy_dir(args.search_round)), models.load_hf(policy_dir(last))

    row_steps = {"rows": 0, "live": 0, "tokens": 0, "seconds": 0.0}
    inner = gen.Generator._decode_rows

    def counted(self, logits, prompt, keys, lens, b, n, *rest, **kw):
        """The decode loop of every call, timed, with its row-steps: all, of given rows, and tokens."""
        start = time.perf_counter()
        final, cut = inner(self, logits, prompt, keys, lens, b, n, *rest, **kw)
        row_steps["seconds"] += time.perf_counter() - start
        length = final["length"][: b * n]
        steps = int(length.max())  # every row of the call runs this many steps
        row_steps["rows"] += len(lens) * n * steps
        row_steps["live"] += b * n * steps
        row_steps["tokens"] += int(length.sum())
        return final, cut

    gen.Generator._decode_rows = counted

    def run(variant: str, kind: str) -> tuple[dict, str]:
        gen.FINE_ROW_GRID, gen.ROW_REUSE = VARIANTS[variant]
        gen._ROW_BUCKETS.clear()  # each run chooses its buckets from its own history only
        row_steps.update(rows=0, live=0, tokens=0, seconds=0.0)
        compiles = len(gen.COMPILES)
        start = time.perf_counter()
        if kind == "search":
            policy = LMPolicy(searcher, tok, config.mcts)
            trees = []
            LockstepSearch(policy, config.mcts, sandbox=sandbox, seed=0).run(pool, trees.append, total=len(pool))
            result = json.dumps(sorted(json.dumps(t.to_json()) for t in trees))
        else:
            generator = gen.Generator(sampler)
            out = [sample_solutions(generator, tok, dev, n, sandbox=sandbox, temperature=t, max_tokens=config.eval.max_tokens)
                   for n, t in ((1, 0.0), (config.eval.samples, config.eval.temperature))]
            result = json.dumps([[[s.text for s in row] for row in part] for part in out])
        wall = time.perf_counter() - start
        stats = dict(wall=wall, decode=row_steps["seconds"], compiles=len(gen.COMPILES) - compiles,
                     filler=1 - row_steps["live"] / row_steps["rows"],
                     stopped=(row_steps["live"] - row_steps["tokens"]) / row_steps["rows"])
        return stats, result

    table: dict[tuple[str, str], list[dict]] = {}
    with Sandbox(workers=2, timeout_s=2.0, memory_mb=512) as sandbox:
        for kind in ("search", "sampling"):
            results = {}
            for variant in VARIANTS:  # compiles every shape this variant picks
                stats, results[variant] = run(variant, kind)
                print(f"{kind} {variant}: first run {stats['wall']:.1f}s, {stats['compiles']} programs compiled",
                      flush=True)
            if len(set(results.values())) != 1:
                raise SystemExit(f"bench_padding: the {kind} variants disagree")
            for rep in range(args.repeats):
                for variant in VARIANTS:
                    stats, _ = run(variant, kind)
                    table.setdefault((kind, variant), []).append(stats)
                    print(f"{kind} {variant} run {rep}: {stats['wall']:.1f}s (decode {stats['decode']:.1f}s)", flush=True)

    med = lambda runs, k: statistics.median(r[k] for r in runs)
    print(f"\n{args.problems} problems; search: round {args.search_round}'s policy, demo settings; sampling: round "
          f"{last}'s policy, greedy + {config.eval.samples} at {config.eval.temperature}; median of {args.repeats}")
    print("| work | variant | wall s | decode s | filler row-steps | steps of rows already stopped |")
    print("|---|---|---|---|---|---|")
    for (kind, variant), runs in table.items():
        print(f"| {kind} | {variant} | {med(runs, 'wall'):.1f} | {med(runs, 'decode'):.1f} | "
              f"{med(runs, 'filler'):.0%} | {med(runs, 'stopped'):.0%} |")
    base, ours = table[("search", "powers of two, 4x reuse")], table[("search", "1.5x grid")]
    sampled = lambda v: med(table[("sampling", v)], "wall")
    print(f"sampling ratio: {sampled('powers of two, 4x reuse') / sampled('1.5x grid'):.2f}")
    print(f"padding ratio: {med(base, 'decode') / med(ours, 'decode'):.2f}")


if __name__ == "__main__":
    main()

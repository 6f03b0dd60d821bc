"""Answer continuations in the search: the whole path prefilled again vs only the program's output run
after the final step's cached keys/values (`LMPolicy.finish` with `mcts.prefix_cache_mb`).

Needs a trained policy, so that final steps are written and verified: a finished `make demo` run
(`--workdir runs/demo`; round 1's policy by default) and the demo's search settings. Both sides run
the same lockstep search over the first `--problems` pool problems, with the step prefix cache on;
only `finish` differs, and the trees must come out identical. Sides alternate for `--repeats` runs;
the table shows medians of the runs after the first (compiles excluded). Last line:
`finish ratio: X` (answer-continuation time, whole path / cached).

    .venv/bin/python benchmarks/bench_finish.py --workdir runs/demo [--round 1 --problems 128 --repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/demo")
    p.add_argument("--round", type=int, default=1)
    p.add_argument("--problems", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from configs import demo
    from rstar_jax import models
    from rstar_jax.data.problems import load_problems
    from rstar_jax.mcts.lm_policy import LMPolicy
    from rstar_jax.mcts.search import LockstepSearch
    from rstar_jax.sandbox import Sandbox
    from rstar_jax.tokenizer import StepTokenizer

    policy_dir = os.path.join(args.workdir, f"round_{args.round}", "policy", "export")
    if not os.path.isdir(policy_dir):
        raise SystemExit(f"bench_finish: no policy at {policy_dir}; run `make demo` (or pass --workdir) first")
    cfg = demo.get_config().mcts
    tok = StepTokenizer.from_file(os.path.join(args.workdir, "world"))
    pool = load_problems(os.path.join(args.workdir, "world", "pool.jsonl"))[: args.problems]
    model = models.load_hf(policy_dir)

    class WholePathFinish(LMPolicy):
        """The same policy, its answer continuations prefilled from the whole text (the cache unused)."""

        def finish(self, requests):
            cache, self.cache = self.cache, None
            try:
                return super().finish(requests)
            finally:
                self.cache = cache

    runs: dict[str, list[dict]] = {"whole path": [], "cached": []}
    trees: dict[str, list[str]] = {}
    with Sandbox(workers=2, timeout_s=2.0, memory_mb=512) as sandbox:
        for rep in range(args.repeats):
            for side, cls in (("whole path", WholePathFinish), ("cached", LMPolicy)):
                policy = cls(model, tok, cfg)
                spent = [0.0]
                inner = policy.finish

                def finish(requests, inner=inner, spent=spent):
                    t = time.perf_counter()
                    out = inner(requests)
                    spent[0] += time.perf_counter() - t
                    return out

                policy.finish = finish
                out = []
                t0 = time.perf_counter()
                LockstepSearch(policy, cfg, sandbox=sandbox, seed=0).run(pool, out.append, total=len(pool))
                runs[side].append(dict(search=time.perf_counter() - t0, finish=spent[0],
                                       prefilled=policy.counters.prefill_tokens))
                trees.setdefault(side, sorted(json.dumps(t.to_json()) for t in out))
                print(f"run {rep} {side}: search {runs[side][-1]['search']:.1f}s, finish {spent[0]:.1f}s", flush=True)
    if trees["whole path"] != trees["cached"]:
        raise SystemExit("bench_finish: the two sides built different trees")
    med = lambda side, key: statistics.median(r[key] for r in runs[side][1:] or runs[side])
    print(f"\n{args.problems} pool problems, round {args.round} policy, identical trees on both sides\n")
    print("| answer continuation | finish s | search s | prompt tokens prefilled |")
    print("|---|---|---|---|")
    for side in runs:
        print(f"| {side} | {med(side, 'finish'):.1f} | {med(side, 'search'):.1f} | {runs[side][-1]['prefilled']} |")
    print(f"search ratio: {med('whole path', 'search') / med('cached', 'search'):.2f}")
    print(f"finish ratio: {med('whole path', 'finish') / med('cached', 'finish'):.2f}")


if __name__ == "__main__":
    main()

"""PPM scoring in a PPM-augmented search: each new node's whole path vs only its new step after the
parent's cached keys/values (`PPMScorer(cache_mb=...)`, on with `mcts.prefix_cache_mb`).

Both sides run the same lockstep search (the toy teacher as a scripted policy, so scoring is the
model work; a demo-sized random PPM; the same problems and seeds) and must build the same trees.
Each side runs `--repeats` times, alternating, with one scorer per side whose path cache is emptied
before every run; the table shows the first run's scoring time (compiles included: the cached side
meets more shapes), the median of the later runs (compiled programs reused), the tokens run through
the PPM and the search's wall time. Last line: `ppm score ratio: X` (median scoring time of the
later runs, whole paths / cached).

    .venv/bin/python benchmarks/bench_ppm_score.py [--problems 64 --rollouts 4 --repeats 4 --head value]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--problems", type=int, default=64)
    p.add_argument("--rollouts", type=int, default=4)
    p.add_argument("--children", type=int, default=4)
    p.add_argument("--cache_mb", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--head", choices=("value", "logprob"), default="value",
                   help="the PPM's head (ppm_train.head); a log-prob head re-runs each cached prefix's last token")
    args = p.parse_args()

    import numpy as np

    from configs import base, demo
    from rstar_jax.data import toyworld
    from rstar_jax.mcts import ScriptedPolicy
    from rstar_jax.generate import PrefixCache
    from rstar_jax.mcts.scorer import PPMScorer
    from rstar_jax.mcts.search import LockstepSearch
    from rstar_jax.models import Qwen2Config, init_model
    from rstar_jax.sandbox import Sandbox
    from rstar_jax.tokenizer import train_demo_tokenizer

    problems = toyworld.generate_problems(args.problems, seed=7)
    tok = train_demo_tokenizer(toyworld.tokenizer_corpus(toyworld.generate_problems(600, seed=8),
                                                         np.random.default_rng(0)), 512)
    arch = dict(demo.get_config().arch)
    ppm = init_model(Qwen2Config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **arch), seed=1, ppm=True,
                     head_init_std=0.5, ppm_head=args.head)
    cfg = base.mcts_config()
    with cfg.unlocked():
        cfg.update(rollouts=args.rollouts, num_children=args.children, q_init="ppm", dedupe="code",
                   batch_trees=64, max_nodes=128, exec_cache=True)
    policy = lambda: ScriptedPolicy(lambda q, steps, n, rng: toyworld.teacher_next_steps(q, steps, n, rng))

    runs: dict[str, list[dict]] = {"whole paths": [], "cached prefixes": []}
    shapes = {}
    scorers = {name: PPMScorer(ppm, tok, cache_mb=mb) for name, mb in (("whole paths", 0),
                                                                       ("cached prefixes", args.cache_mb))}
    with Sandbox(workers=2, timeout_s=5.0, memory_mb=512) as sandbox:
        for rep in range(args.repeats):
            for name, scorer in scorers.items():
                if scorer.cache is not None:  # a fresh cache each repeat; compiled programs stay
                    scorer.cache = PrefixCache(scorer.cache.budget)
                scorer.tokens_scored = 0
                trees = []
                t0 = time.perf_counter()
                stats = LockstepSearch(policy(), cfg, sandbox=sandbox, ppm=scorer, seed=rep).run(
                    problems, trees.append, total=len(problems))
                wall = time.perf_counter() - t0
                runs[name].append(dict(ppm=stats.time_ppm, tokens=scorer.tokens_scored, wall=wall,
                                       scored=stats.ppm_scored))
                shapes.setdefault(rep, []).append([[(n.parent, n.text, n.visits) for n in t.nodes]
                                                   for t in sorted(trees, key=lambda t: t.problem_id)])
                print(f"  repeat {rep} {name}: scoring {stats.time_ppm:.2f} s, {scorer.tokens_scored} tokens, "
                      f"{stats.ppm_scored} nodes, wall {wall:.2f} s", flush=True)
    same = all(a == b for a, b in shapes.values())
    med = {name: {k: statistics.median(r[k] for r in rs[1:] or rs) for k in ("ppm", "tokens", "wall", "scored")}
           for name, rs in runs.items()}
    print(f"\n{args.problems} toy problems, {args.rollouts} rollouts, n = {args.children}, demo-sized PPM; "
          f"same trees on both sides: {'yes' if same else 'NO'}")
    print(f"{'side':<16} {'scoring s (later, median)':>26} {'first run s':>12} {'PPM tokens':>11} {'nodes':>6} {'search s':>9}")
    for name, m in med.items():
        print(f"{name:<16} {m['ppm']:>26.2f} {runs[name][0]['ppm']:>12.2f} {m['tokens']:>11.0f} {m['scored']:>6.0f} "
              f"{m['wall']:>9.2f}")
    print(f"tokens run: {med['whole paths']['tokens'] / med['cached prefixes']['tokens']:.2f}x fewer")
    print(f"ppm score ratio: {med['whole paths']['ppm'] / med['cached prefixes']['ppm']:.2f}")


if __name__ == "__main__":
    main()

"""Lockstep MCTS vs one tree at a time: the same search (tiny LM policy, same problems, same rollouts).

The tiny policy is a ~0.5M-parameter Qwen2 fine-tuned for a few minutes on the toy world's teacher
solutions (cached under --workdir, so only the first run pays for it): it writes parsable steps with
the duplicates and mistakes of a small model, which is what the search is built for. Both sides
search with the real sandbox and grader. Prints rollouts/s for both sides, the share of wall time in
decoding / code execution / tree updates / host glue, prompt tokens prefilled per generated token,
programs executed and answered from the execution cache (mcts.exec_cache, on for both sides unless
--no-exec-cache), the policy's decode tokens/s at growing batch sizes (what batching can buy on this
machine), and, last, `mcts ratio: X` (lockstep / one-at-a-time rollouts/s).

    .venv/bin/python benchmarks/bench_mcts.py [--batch 64 --problems 64 --rollouts 4 --n 4 --variants]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Measure the checkout this file is in (a worktree), not whatever rstar_jax is installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_policy(workdir: str, seed: int):
    """(model, tokenizer): the demo tokenizer and a tiny Qwen2 SFT-trained on teacher solutions (cached)."""
    import numpy as np
    from etils import epath

    from configs.base import train_config
    from rstar_jax.data import toyworld
    from rstar_jax.data.selection import SFTExample
    from rstar_jax.models import Qwen2Config, init_model
    from rstar_jax.tokenizer import StepTokenizer, train_demo_tokenizer
    from rstar_jax.train.sft import train_sft

    work = epath.Path(workdir)
    problems = toyworld.splits(seed, n_train=2000, n_pool=10, n_heldout=10)["train"]
    rng = np.random.default_rng(seed)
    corpus = list(toyworld.tokenizer_corpus(problems, rng))
    tok_path = work / "tokenizer.json"
    if tok_path.exists():
        tok = StepTokenizer.from_file(tok_path)
    else:
        tok = train_demo_tokenizer(corpus, 512)
        tok.save(work)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=352, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True)
    examples = [SFTExample(p.question, toyworld.teacher_solution(p, rng)) for p in problems]
    tc = train_config()
    tc.update(learning_rate=3e-3, epochs=4, batch_size=16, seq_len=512, eval_fraction=0.0, warmup_ratio=0.05,
              checkpoint_every=25, log_every=10)
    model, summary = train_sft(init_model(cfg, seed=seed), tok, examples, tc, work / "sft")
    print(f"tiny policy: {summary.get('steps')} SFT steps, final loss {summary.get('final_loss', float('nan')):.3f}")
    return model, tok


SHARES = (("decode", "time_decode"), ("exec", "time_execute"), ("tree", "time_tree"), ("ppm", "time_ppm"),
          ("host", "time_host"))


def run_side(policy, cfg, sandbox, problems, batch: int, seed: int):
    """One search; returns its SearchStats and how many decode programs it compiled."""
    from rstar_jax.generate import COMPILES
    from rstar_jax.mcts.search import LockstepSearch

    before = len(COMPILES)
    stats = LockstepSearch(policy, cfg, sandbox=sandbox, seed=seed, batch=batch).run(problems, lambda tree: None)
    return stats, len(COMPILES) - before


def decode_scaling(model, tok, problems, new_tokens: int, n: int) -> str:
    """Decode tokens/s of the policy at growing batch sizes (every row decodes `new_tokens`, no stops): how
    much a bigger batch buys on this machine, which bounds what lockstep can gain over one tree at a time."""
    import time

    from rstar_jax.generate import Generator
    from rstar_jax.steps import build_prompt

    gen = Generator(model)
    prompts = tok.encode_batch([build_prompt(p.question) for p in problems])
    parts = []
    for trees in (1, 4, 16, 64):
        batch = [prompts[i % len(prompts)] for i in range(trees)]
        run = lambda seed: gen.generate(batch, new_tokens, n=n, temperature=1.0, seed=seed)
        run(0)                                            # compile
        times = []
        for seed in range(1, 4):
            start = time.perf_counter()
            run(seed)
            times.append(time.perf_counter() - start)
        parts.append(f"{trees * n} rows {trees * n * new_tokens / sorted(times)[1]:.0f}")
    return "decode tok/s by batch (prefill included): " + ", ".join(parts)


def row(name: str, stats) -> str:
    total = stats.time_total
    shares = " ".join(f"{100 * getattr(stats, f) / total:5.1f}%" for _, f in SHARES)
    prefill = stats.tokens_prefilled / max(stats.tokens_decoded, 1)
    decode_rate = stats.tokens_decoded / max(stats.time_decode, 1e-9)
    return (f"{name:<15} {stats.problems:4d} {stats.rollouts:6d} {total:8.1f} {stats.rollouts / total:9.3f} {shares} "
            f"{prefill:8.2f} {decode_rate:8.0f} {stats.programs:6d} {stats.candidates:6d} "
            f"{100 * stats.duplicates / max(stats.candidates, 1):5.1f}% {stats.programs_cached:6d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/bench_mcts", help="caches the tokenizer and the tiny policy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64, help="trees in lockstep")
    ap.add_argument("--problems", type=int, default=64, help="problems searched by the lockstep side")
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="candidates per expansion")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per side (the table shows medians)")
    ap.add_argument("--no-exec-cache", dest="exec_cache", action="store_false",
                    help="execute every program, even one this tree already ran (mcts.exec_cache off on both sides)")
    ap.add_argument("--variants", action="store_true",
                    help="also run the lockstep side with code dedupe, without prefix sharing, with width [n, 2], "
                         "and with the prefix cache (paths' keys/values kept, mcts.prefix_cache_mb=1024)")
    args = ap.parse_args()

    from configs.base import mcts_config
    from rstar_jax.data import toyworld
    from rstar_jax.mcts.lm_policy import LMPolicy
    from rstar_jax.sandbox import Sandbox

    model, tok = tiny_policy(args.workdir, args.seed)
    problems = toyworld.generate_problems(args.problems, seed=args.seed + 1, levels=(1, 2, 3, 4))
    cfg = mcts_config()
    cfg.update(rollouts=args.rollouts, num_children=args.n, max_step_tokens=32, errors_threshold=2, max_nodes=256,
               exec_cache=args.exec_cache)  # the same on both sides

    sides = [("lockstep", cfg, problems, args.batch), ("one-at-a-time", cfg, problems, 1)]
    if args.variants:
        for name, change in (("dedupe=code", dict(dedupe="code")), ("no-prefix-share", dict(share_prefix=False)),
                             ("width=[n,2]", dict(width_by_depth=[args.n, 2])),
                             ("prefix-cache", dict(prefix_cache_mb=1024))):
            c = mcts_config()
            c.update(cfg.to_dict())
            c.update(change)
            sides.append((name, c, problems, args.batch))
    results = {}
    with Sandbox(workers=None, timeout_s=5.0, memory_mb=512) as sandbox:
        for name, c, probs, batch in sides:
            # The first run compiles every shape this exact search needs; the timed runs repeat it.
            run_side(LMPolicy(model, tok, c), c, sandbox, probs, batch, args.seed)
            runs = []
            for _ in range(args.repeats):
                stats, compiles = run_side(LMPolicy(model, tok, c), c, sandbox, probs, batch, args.seed)
                if compiles:
                    print(f"warning: {name}: {compiles} decode programs compiled during a timed run")
                runs.append(stats)
            results[name] = sorted(runs, key=lambda s: s.rollouts / s.time_total)[len(runs) // 2]

    print()
    print(f"tiny LM policy, {args.rollouts} rollouts/problem, n={args.n}, lockstep B={args.batch}; "
          f"median of {args.repeats} run(s) per side")
    print(f"{'side':<15} {'prob':>4} {'rollouts':>6} {'wall s':>8} {'rollout/s':>9} "
          + " ".join(f"{n:>6}" for n, _ in SHARES) + f" {'pre/gen':>8} {'dec tok/s':>8} {'progs':>6} {'cands':>6} {'dups':>6} {'cached':>6}")
    print(f"exec_cache={cfg.exec_cache} (both sides): 'progs' ran in the sandbox, 'cached' reused a result")
    for name, stats in results.items():
        print(row(name, stats))
    lock, serial = results["lockstep"], results["one-at-a-time"]
    ratio = (lock.rollouts / lock.time_total) / (serial.rollouts / serial.time_total)
    print(decode_scaling(model, tok, problems, cfg.max_step_tokens, args.n))
    print(f"mcts ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

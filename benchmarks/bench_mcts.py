"""Lockstep MCTS vs one tree at a time: the same search (tiny LM policy, same problems, same rollouts).

The tiny policy is a ~0.5M-parameter Qwen2 fine-tuned for a few minutes on the toy world's teacher
solutions (cached under --workdir, so only the first run pays for it): it writes parsable steps with
the duplicates and mistakes of a small model, which is what the search is built for. Both sides
search with the real sandbox and grader and the demo's search settings (prefix cache on, execution
cache on). Prints per side: rollouts/s, the share of wall time in decoding / code execution / tree
updates / PPM / host glue, prompt tokens prefilled per generated token, programs executed and answered
from the execution cache, and the CPU seconds of this process and of the sandbox workers (with the
programs they fork), which bound what any batching can reach on this machine: a side's wall time is
at least its CPU seconds over the cores. Then the policy's decode tokens/s at growing batch sizes,
and, last, `mcts ratio: X` (lockstep / one-at-a-time rollouts/s, medians of --repeats runs).

--split-cores keeps this process (decoding, tree updates) on core 0 and the sandbox on core 1, as on an
accelerator host where decoding does not take the cores that run programs: there --variants'
`pipelined` row shows what overlapping one group's programs with another's decoding buys.

--devices N runs this process over N CPU devices (XLA's host-platform device count, single-threaded
Eigen per device): the lockstep side splits its decode batch over them (a mesh over the data axis),
the one-at-a-time side keeps one device (its 4 rows do not split usefully).

    .venv/bin/python benchmarks/bench_mcts.py [--batch 64 --problems 64 --rollouts 4 --n 4 --variants --devices 2]
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "--split-cores" in sys.argv:  # before jax starts its threads, which inherit this thread's cores
    os.sched_setaffinity(0, {0})
if "--devices" in sys.argv:  # must be set before jax is imported
    _n = sys.argv[sys.argv.index("--devices") + 1]
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={_n} --xla_cpu_multi_thread_eigen=false")
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


def cpu_seconds(sandbox) -> tuple[float, float]:
    """(this process, the sandbox workers and the programs they forked and reaped) CPU seconds so far."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    ticks = 0
    for pid in sandbox.worker_pids():
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        ticks += sum(int(x) for x in fields[11:15])  # utime, stime, cutime, cstime
    return me.ru_utime + me.ru_stime, ticks / os.sysconf("SC_CLK_TCK")


def run_side(policy, cfg, sandbox, problems, batch: int, seed: int):
    """One search; returns its SearchStats, the CPU seconds it took (this process, the sandbox) and how
    many decode programs it compiled."""
    from rstar_jax.generate import COMPILES
    from rstar_jax.mcts.search import LockstepSearch

    before = len(COMPILES)
    main0, box0 = cpu_seconds(sandbox)
    stats = LockstepSearch(policy, cfg, sandbox=sandbox, seed=seed, batch=batch).run(problems, lambda tree: None)
    main1, box1 = cpu_seconds(sandbox)
    return stats, (main1 - main0, box1 - box0), len(COMPILES) - before


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


def row(name: str, stats, cpu: tuple[float, float]) -> str:
    total = stats.time_total
    shares = " ".join(f"{100 * getattr(stats, f) / total:5.1f}%" for _, f in SHARES)
    prefill = stats.tokens_prefilled / max(stats.tokens_decoded, 1)
    decode_rate = stats.tokens_decoded / max(stats.time_decode, 1e-9)
    return (f"{name:<15} {stats.problems:4d} {stats.rollouts:6d} {total:8.1f} {stats.rollouts / total:9.3f} {shares} "
            f"{prefill:8.2f} {decode_rate:8.0f} {stats.programs:6d} {stats.candidates:6d} "
            f"{100 * stats.duplicates / max(stats.candidates, 1):5.1f}% {stats.programs_cached:6d} "
            f"{cpu[0]:6.1f} {cpu[1]:6.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", default="/tmp/bench_mcts", help="caches the tokenizer and the tiny policy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=64, help="trees in lockstep")
    ap.add_argument("--problems", type=int, default=64, help="problems searched by the lockstep side")
    ap.add_argument("--rollouts", type=int, default=4)
    ap.add_argument("--n", type=int, default=4, help="candidates per expansion")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per side (the table shows medians)")
    ap.add_argument("--prefix-cache-mb", type=int, default=1024,
                    help="mcts.prefix_cache_mb on both sides (the demo's 1024; 0 = every expansion prefills its path)")
    ap.add_argument("--no-exec-cache", dest="exec_cache", action="store_false",
                    help="execute every program, even one this tree already ran (mcts.exec_cache off on both sides)")
    ap.add_argument("--devices", type=int, default=1,
                    help="CPU devices for this process; the lockstep side decodes over all of them")
    ap.add_argument("--split-cores", action="store_true",
                    help="this process on core 0, the sandbox workers on core 1 (read before jax starts)")
    ap.add_argument("--variants", nargs="?", const="all", default="",
                    help="also run the lockstep side pipelined (mcts.pipeline_groups=2), with code dedupe, without "
                         "prefix sharing, with width [n, 2], with the other prefix cache setting and on one device "
                         "(with --devices); a comma-separated list of row names picks some")
    args = ap.parse_args()

    import jax

    from configs.base import mcts_config
    from rstar_jax import sharding
    from rstar_jax.data import toyworld
    from rstar_jax.mcts.lm_policy import LMPolicy
    from rstar_jax.sandbox import Sandbox

    model, tok = tiny_policy(args.workdir, args.seed)
    problems = toyworld.generate_problems(args.problems, seed=args.seed + 1, levels=(1, 2, 3, 4))
    cfg = mcts_config()
    cfg.update(rollouts=args.rollouts, num_children=args.n, max_step_tokens=32, errors_threshold=2, max_nodes=256,
               exec_cache=args.exec_cache, prefix_cache_mb=args.prefix_cache_mb)  # the same on both sides
    mesh = sharding.make_mesh({"data": -1}) if jax.device_count() > 1 else None

    def variant(**change):
        c = mcts_config()
        c.update(cfg.to_dict())
        c.update(change)
        return c

    # (name, config, trees in lockstep, mesh)
    sides = [("lockstep", cfg, args.batch, mesh), ("one-at-a-time", cfg, 1, None)]
    variants = [(name, variant(**change), args.batch, mesh) for name, change in (
        ("pipelined", dict(pipeline_groups=2)), ("dedupe=code", dict(dedupe="code")),
        ("no-prefix-share", dict(share_prefix=False, prefix_cache_mb=0)),
        ("width=[n,2]", dict(width_by_depth=[args.n, 2])),
        ("prefix-cache" if args.prefix_cache_mb == 0 else "no-prefix-cache",
         dict(prefix_cache_mb=1024 if args.prefix_cache_mb == 0 else 0)))]
    if mesh is not None:
        variants.append(("one device", cfg, args.batch, None))
    wanted = {v[0] for v in variants} if args.variants == "all" else set(filter(None, args.variants.split(",")))
    if wanted - {v[0] for v in variants}:
        ap.error(f"--variants: unknown rows {sorted(wanted - {v[0] for v in variants})}; "
                 f"known: {[v[0] for v in variants]}")
    sides += [v for v in variants if v[0] in wanted]
    results = {}
    with Sandbox(workers=None, timeout_s=5.0, memory_mb=512) as sandbox:
        if args.split_cores:
            for pid in sandbox.worker_pids():  # the programs they fork inherit it
                os.sched_setaffinity(pid, {1})
        for name, c, batch, m in sides:
            # The first run compiles every shape this exact search needs; the timed runs repeat it.
            run_side(LMPolicy(model, tok, c, mesh=m), c, sandbox, problems, batch, args.seed)
            runs = []
            for _ in range(args.repeats):
                stats, cpu, compiles = run_side(LMPolicy(model, tok, c, mesh=m), c, sandbox, problems, batch, args.seed)
                if compiles:
                    print(f"warning: {name}: {compiles} decode programs compiled during a timed run")
                runs.append((stats, cpu))
            results[name] = sorted(runs, key=lambda r: r[0].rollouts / r[0].time_total)[len(runs) // 2]

    print()
    print(f"tiny LM policy, {args.rollouts} rollouts/problem, n={args.n}, lockstep B={args.batch} over "
          f"{jax.device_count()} device(s), prefix cache {args.prefix_cache_mb} MiB; median of {args.repeats} run(s) "
          f"per side")
    print(f"{'side':<15} {'prob':>4} {'rollouts':>6} {'wall s':>8} {'rollout/s':>9} "
          + " ".join(f"{n:>6}" for n, _ in SHARES) + f" {'pre/gen':>8} {'dec tok/s':>8} {'progs':>6} {'cands':>6} "
          f"{'dups':>6} {'cached':>6} {'cpu me':>6} {'cpu sb':>6}")
    print(f"exec_cache={cfg.exec_cache} (both sides): 'progs' ran in the sandbox, 'cached' reused a result; "
          f"'cpu me' / 'cpu sb': CPU seconds of this process / of the sandbox workers and their programs")
    for name, (stats, cpu) in results.items():
        print(row(name, stats, cpu))
    (lock, lock_cpu), (serial, _) = results["lockstep"], results["one-at-a-time"]
    cores = os.cpu_count() or 1
    floor = sum(lock_cpu) / cores
    print(f"CPU-bound ceiling: lockstep's work ({sum(lock_cpu):.1f} CPU s) over {cores} cores takes >= {floor:.1f} s, "
          f"so with that work its ratio on this machine is at most {serial.time_total / floor:.2f}")
    print(decode_scaling(model, tok, problems, cfg.max_step_tokens, args.n))
    ratio = (lock.rollouts / lock.time_total) / (serial.rollouts / serial.time_total)
    print(f"mcts ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""PPM training: batches cut to the bucket of their longest pair (`ppm_train.min_width`) vs always seq_len.

Both sides run the real `train_ppm` on the same pairs, model and seeds: step pairs and final-answer
pairs built from toy-world teacher solutions, so the lengths are the demo's (most far below seq_len).
Each side trains `--repeats` times, alternating; the table shows median wall time (compiles included:
the cut side compiles one program per width it meets) and pairs/s. Last line: `ppm train ratio: X`.

    .venv/bin/python benchmarks/bench_ppm_train.py [--pairs 400 --seq 320 --repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")


def toy_pairs(n: int, seed: int):
    """Demo-shaped pairs: a prefix of a teacher solution + its next step vs a step with another operator,
    and every fourth pair a whole solution vs the same solution with its answer changed."""
    import numpy as np

    from rstar_jax.data import toyworld
    from rstar_jax.data.selection import PPMPair
    from rstar_jax.steps import END_OF_STEP, build_prompt

    rng = np.random.default_rng(seed)
    out = []
    for i, p in enumerate(toyworld.generate_problems(n, seed=seed)):
        text = toyworld.teacher_solution(p, rng)
        steps = [s + END_OF_STEP for s in text.split(END_OF_STEP)[:-1]]
        if i % 4 == 0 or len(steps) < 2:
            out.append(PPMPair(build_prompt(p.question), text, text.replace(str(p.answer), str(p.answer) + "1")))
            continue
        k = int(rng.integers(1, len(steps)))
        pos = steps[k]
        neg = pos.replace("+", "-") if "+" in pos else pos.replace("-", "+").replace("*", "//")
        out.append(PPMPair(build_prompt(p.question) + "".join(steps[:k]), pos, neg))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--seq", type=int, default=320)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--min_width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    import numpy as np

    from configs import base
    from rstar_jax.data import toyworld
    from rstar_jax.models import Qwen2Config, init_model
    from rstar_jax.tokenizer import train_demo_tokenizer
    from rstar_jax.train.ppm import train_ppm

    pairs = toy_pairs(args.pairs, seed=0)
    tok = train_demo_tokenizer(toyworld.tokenizer_corpus(toyworld.generate_problems(300, seed=1),
                                                         np.random.default_rng(0)), 512)
    lengths = np.array([max(len(tok.encode(x.prompt + x.pos)), len(tok.encode(x.prompt + x.neg))) for x in pairs])
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    sides = {"cut to bucket": args.min_width, "always seq_len": 0}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, width in sides.items():
            tc = base.ppm_train_config()
            tc.update(learning_rate=1e-3, epochs=1, batch_size=args.batch, seq_len=args.seq, warmup_ratio=0.05,
                      eval_fraction=0.0, log_every=10**6, checkpoint_every=10**6, min_width=width)
            with tempfile.TemporaryDirectory() as wd:
                t0 = time.perf_counter()
                train_ppm(init_model(cfg, seed=0, ppm=True), tok, pairs, tc, wd)
                times[name].append(time.perf_counter() - t0)
            print(f"repeat {r + 1}/{args.repeats} {name}: {times[name][-1]:.1f} s", flush=True)

    print(f"{len(pairs)} pairs, tokens per pair side: median {np.median(lengths):.0f}, max {lengths.max()}; "
          f"seq_len {args.seq}, batch {args.batch}, model hidden 128 x 2 layers (the demo's)")
    print(f"{'':16} {'median s':>9} {'pairs/s':>8} {'min..max s':>12}")
    for name, secs in times.items():
        med = statistics.median(secs)
        print(f"{name:16} {med:9.1f} {len(pairs) / med:8.1f} {min(secs):5.1f}..{max(secs):<5.1f}")
    ratio = statistics.median(times["always seq_len"]) / statistics.median(times["cut to bucket"])
    print(f"ppm train ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

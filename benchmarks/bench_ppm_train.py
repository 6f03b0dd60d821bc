"""PPM training: a pair as one row (prompt once, then both steps) in batches of like lengths, what
`train_ppm` runs, vs two rows (prompt + each step) in random batches, the formulation it replaced.

Every side runs the same jitted train step (`common.setup_training`, AdamW) over one epoch of the same
pairs: step pairs and final-answer pairs built from toy-world teacher solutions, so the lengths are the
demo's. "two rows": random batches, each re-laid as prompt+pos and prompt+neg rows cut to the bucket of
their longest (`min_width`) and scored by `Qwen2PPM.__call__`. "one row": the same batches as shared
rows (`ppm.ppm_loss`, `Qwen2PPM.pair_rewards`); their first-step losses must agree. "... grouped": batches
drawn by `pipeline.grouped_order` (`--group`, `ppm_train.group`), as two rows and as one row. One warm-up
epoch per side compiles its widths; then `--repeats` timed epochs, alternating; the table shows median
seconds and pairs/s. Last line: `ppm train ratio: X` (two rows over one row, grouped).

    .venv/bin/python benchmarks/bench_ppm_train.py [--pairs 400 --seq 448 --repeats 3]
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


def two_rows(batch: dict, pad_id: int, min_width: int) -> dict:
    """A batch of shared rows re-laid as the former prompt+pos / prompt+neg rows (right-padded, cut to the
    bucket of the longest), with each row's length and where its step starts."""
    import numpy as np

    from rstar_jax.generate import bucket

    p, a, n = batch["prefix_len"], batch["pos_len"], batch["neg_len"]
    width = min(batch["ids"].shape[1], bucket(int(max((p + a).max(), (p + n).max())), min_width))
    out = {}
    for side, parts in (("pos", lambda r: r[:p[i] + a[i]]), ("neg", lambda r: np.concatenate(
            [r[:p[i]], r[p[i] + a[i]:p[i] + a[i] + n[i]]]))):
        ids = np.full((len(p), width), pad_id, np.int32)
        for i, row in enumerate(batch["ids"]):
            seq = parts(row)
            ids[i, :len(seq)] = seq
        out[f"{side}_ids"], out[f"{side}_len"], out[f"{side}_start"] = ids, p + (a if side == "pos" else n), p
    return {**out, "weight": batch["weight"]}


def two_rows_loss(model, batch):
    """The former PPM loss: both sides' rows through `Qwen2PPM.__call__`, the same pairwise loss after."""
    import jax
    import jax.numpy as jnp

    ids = jnp.concatenate([batch["pos_ids"], batch["neg_ids"]])
    r = model(ids, jnp.concatenate([batch["pos_len"], batch["neg_len"]]),
              jnp.concatenate([batch["pos_start"], batch["neg_start"]])).astype(jnp.float32)
    k = batch["pos_ids"].shape[0]
    w = batch["weight"]
    real = (w > 0).astype(jnp.float32)
    sums = {"correct": jnp.sum(real * (r[:k] > r[k:])), "pairs": jnp.sum(real),
            "tokens": jnp.sum(jnp.concatenate([batch["pos_len"], batch["neg_len"]]) * jnp.concatenate([real, real]))
            .astype(jnp.float32)}
    return jnp.sum(w * -jax.nn.log_sigmoid(r[:k] - r[k:])), jnp.sum(w), sums


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=400)
    p.add_argument("--seq", type=int, default=448)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--min_width", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--group", type=int, default=16)
    p.add_argument("--head", default="logprob", choices=("logprob", "value"))
    args = p.parse_args()

    import jax
    import numpy as np

    from configs import base
    from rstar_jax.data import pipeline, toyworld
    from rstar_jax.models import Qwen2Config, init_model
    from rstar_jax.tokenizer import train_demo_tokenizer
    from rstar_jax.train import common, ppm

    pairs = toy_pairs(args.pairs, seed=0)
    tok = train_demo_tokenizer(toyworld.tokenizer_corpus(toyworld.generate_problems(300, seed=1),
                                                         np.random.default_rng(0)), 512)
    tokd = pipeline.tokenize_ppm(tok, pairs, args.seq)

    def batches(group: int) -> list[dict]:
        return [{k: np.asarray(v) for k, v in b.items()} for b in pipeline.ppm_dataset(
            tokd, rows=args.batch, epochs=1, seed=0, prefetch=0, min_width=args.min_width, group=group)]

    shared, grouped = batches(0), batches(args.group)
    sides = {"two rows": (two_rows_loss, [two_rows(b, tok.pad_id, args.min_width) for b in shared]),
             "one row": (ppm.ppm_loss, shared),
             "two rows, grouped": (two_rows_loss, [two_rows(b, tok.pad_id, args.min_width) for b in grouped]),
             "one row, grouped": (ppm.ppm_loss, grouped)}
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=192, num_hidden_layers=3,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    tc = base.ppm_train_config()
    tc.update(learning_rate=1e-3, batch_size=args.batch, seq_len=args.seq)
    runs, first_loss = {}, {}
    for name, (loss_fn, batches) in sides.items():
        setup = common.setup_training(init_model(cfg, seed=0, ppm=True, ppm_head=args.head), loss_fn, tc,
                                      len(batches), None)
        state = [setup.state.params, setup.state.opt_state]

        def epoch(setup=setup, state=state, batches=batches):
            t0 = time.perf_counter()
            for i, b in enumerate(batches):
                state[0], state[1], m = setup.train_step(state[0], state[1], setup.state.rest, b,
                                                         setup.learning_rates[i])
            jax.block_until_ready(m)
            return time.perf_counter() - t0

        first = setup.train_step(*jax.tree.map(lambda x: x.copy(), (state[0], state[1])), setup.state.rest,
                                 batches[0], setup.learning_rates[0])[2]
        first_loss[name] = float(first["loss"])
        epoch()  # warm-up: compiles every width this side meets
        runs[name] = epoch
    a, b = first_loss["two rows"], first_loss["one row"]
    assert abs(a - b) <= 1e-4 * abs(b), f"the two formulations disagree on the first loss: {first_loss}"
    times: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.repeats):
        for name, epoch in runs.items():
            times[name].append(epoch())
            print(f"repeat {r + 1}/{args.repeats} {name}: {times[name][-1]:.2f} s", flush=True)

    widths = {name: int(np.mean([b.get("ids", b.get("pos_ids")).shape[1] for b in batches]))
              for name, (_, batches) in sides.items()}
    print(f"{len(pairs)} pairs in {len(shared)} batches of {args.batch}; seq_len {args.seq}; {args.head} head; "
          f"demo policy (hidden 128 x 3 layers); first-step losses {a:.6f} / {b:.6f}")
    print(f"{'':18} {'rows x mean width':>18} {'median s':>9} {'pairs/s':>8} {'min..max s':>12}")
    for name, secs in times.items():
        med = statistics.median(secs)
        rows = args.batch * (2 if name.startswith("two rows") else 1)
        print(f"{name:18} {f'{rows} x {widths[name]}':>18} {med:9.2f} {len(pairs) / med:8.1f} "
              f"{min(secs):5.2f}..{max(secs):<5.2f}")
    ratio = statistics.median(times["two rows"]) / statistics.median(times["one row, grouped"])
    print(f"ppm train ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

"""Decode throughput: our generator vs transformers `generate` (torch CPU), greedy, same weights.

Usage: .venv/bin/python benchmarks/bench_generate.py [--repeats 3] [--prompt 32] [--new 64] [--batches 1,16,64]
For each batch: new tokens/s of both, their ratio, and the model FLOP/s we reach as a fraction of
this CPU's throughput on the decode step's matmuls (a jitted loop of plain matmuls of the same
shapes). Last line: `generate ratio: X` = ours / reference at the largest batch.
"""
import argparse
import os
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(__file__))
from bench_forward import median_time, reference_and_ours  # noqa: E402

from rstar_jax.generate import Generator  # noqa: E402


def decode_flops_per_token(cfg, context: int) -> float:
    """Multiply-adds x 2 of one decoded token: projections, MLP, LM head, attention over `context`."""
    d, f, l, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * f + 2 * q * context
    return 2.0 * (l * per_layer + d * v)


def matmul_peak(cfg, batch: int, steps: int = 32) -> float:
    """FLOP/s of a jitted loop doing one decode step's weight matmuls (no attention) at `batch` rows."""
    d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    rng = np.random.RandomState(0)
    ws = [jnp.asarray(rng.randn(*s).astype(np.float32) * 0.02)
          for s in [(d, q), (d, kv), (d, kv), (q, d), (d, f), (d, f), (f, d)]]
    head = jnp.asarray(rng.randn(d, v).astype(np.float32) * 0.02)
    x0 = jnp.asarray(rng.randn(batch, d).astype(np.float32))

    @jax.jit
    def run(x):
        def step(_, x):
            for _layer in range(cfg.num_hidden_layers):
                a = x @ ws[0]
                x = x + (a + jnp.pad(x @ ws[1] + x @ ws[2], ((0, 0), (0, q - kv)))) @ ws[3]
                x = x + ((x @ ws[4]) * (x @ ws[5])) @ ws[6]
            return x * 1e-3 + (x @ head)[:, :d]
        return jax.lax.fori_loop(0, steps, step, x)

    t = median_time(lambda: run(x0).block_until_ready(), 3)
    return decode_flops_per_token(cfg, 0) * batch * steps / t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--batches", default="1,16,64")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = reference_and_ours(tmp)
    cfg = ours.config
    gen = Generator(ours)
    print(f"model: {sum(p.numel() for p in hf.parameters()) / 1e6:.1f}M parameters, prompt {args.prompt}, "
          f"{args.new} new tokens, greedy, torch threads {torch.get_num_threads()}")
    print(f"{'batch':>6} {'ours tok/s':>11} {'hf tok/s':>9} {'ratio':>6} {'ours GFLOP/s':>13} "
          f"{'matmul GFLOP/s':>15} {'fraction':>9}")
    ratio = None
    for b in [int(x) for x in args.batches.split(",")]:
        prompts = np.random.RandomState(b).randint(0, cfg.vocab_size, (b, args.prompt))
        plist = prompts.tolist()
        t_ours = median_time(lambda: gen.generate(plist, args.new), args.repeats)
        tp = torch.tensor(prompts)
        with torch.no_grad():
            t_ref = median_time(lambda: hf.generate(tp, attention_mask=torch.ones_like(tp), max_new_tokens=args.new,
                                                    min_new_tokens=args.new, do_sample=False, pad_token_id=0),
                                args.repeats)
        tok = b * args.new
        flops = decode_flops_per_token(cfg, args.prompt + args.new // 2) * tok / t_ours
        peak = matmul_peak(cfg, b)
        ratio = t_ref / t_ours
        print(f"{b:>6} {tok / t_ours:>11.0f} {tok / t_ref:>9.0f} {ratio:>6.2f} {flops / 1e9:>13.1f} "
              f"{peak / 1e9:>15.1f} {flops / peak:>9.2f}")
    print(f"generate ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

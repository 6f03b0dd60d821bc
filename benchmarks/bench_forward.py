"""Forward tokens/s: our jitted Qwen2 vs transformers (torch CPU), same ~19M-parameter weights.

Usage: .venv/bin/python benchmarks/bench_forward.py [--repeats 5] [--seq 128] [--batches 1,8,32]
Prints a table (median of repeated runs) and, last, `forward ratio: X` = geometric mean over the
batch sizes of ours / reference tokens/s (> 1 means we are faster).
"""
import argparse
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from rstar_jax.models import functional, load_hf

BENCH_CONFIG = dict(vocab_size=16384, hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                    num_attention_heads=6, num_key_value_heads=2, tie_word_embeddings=True,
                    max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


def reference_and_ours(tmp: str):
    """The same random weights as a transformers model and as ours (via a safetensors round trip)."""
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(Qwen2Config(**BENCH_CONFIG)).eval()
    hf.save_pretrained(tmp)
    return hf, load_hf(tmp)


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (compile / allocator)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batches", default="1,8,32")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        hf, ours = reference_and_ours(tmp)
    params = sum(p.numel() for p in hf.parameters())
    fn, state = functional(ours)
    fwd = jax.jit(fn)
    print(f"model: {params / 1e6:.1f}M parameters, seq {args.seq}, torch threads {torch.get_num_threads()}, "
          f"jax devices {jax.devices()[0].platform}")
    print(f"{'batch':>6} {'ours tok/s':>12} {'transformers tok/s':>19} {'ratio':>7}")
    ratios = []
    for b in [int(x) for x in args.batches.split(",")]:
        ids = np.random.RandomState(b).randint(0, BENCH_CONFIG["vocab_size"], (b, args.seq))
        jids = jnp.asarray(ids, jnp.int32)
        tids = torch.tensor(ids)
        t_ours = median_time(lambda: fwd(state, jids).block_until_ready(), args.repeats)
        with torch.no_grad():
            t_ref = median_time(lambda: hf(tids, use_cache=False).logits, args.repeats)
        tok = b * args.seq
        ratios.append(t_ref / t_ours)
        print(f"{b:>6} {tok / t_ours:>12.0f} {tok / t_ref:>19.0f} {t_ref / t_ours:>7.2f}")
    print(f"forward ratio: {float(np.exp(np.mean(np.log(ratios)))):.2f}")


if __name__ == "__main__":
    main()

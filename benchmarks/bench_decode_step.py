"""The decode loop's sampler and per-row attention: ours against JAX's stock formulations, same process.

Usage: .venv/bin/python benchmarks/bench_decode_step.py [--repeats 5] [--prompts 128] [--n 4] [--new 33]
A demo-sized policy (random weights) decodes `n` samples of each of `prompts` random prompts, as one
search expansion does (temperature 1, no stop: every call runs `new` steps). Variants swap in, one at a
time, the formulations this repository used before: `jax.random.categorical` (Gumbel-max: a random
number per vocabulary entry, then an argmax), `jnp.argmax`, a whole `log_softmax` for the chosen
token's log-probability, and einsums for a row's attention over its own new tokens. Prints median
seconds per call, new tokens/s and ms per new token; last line `decode ratio: X` = stock / ours time.
"""
import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_forward import median_time  # noqa: E402

from rstar_jax import generate as gen  # noqa: E402
from rstar_jax import models  # noqa: E402

def stock_categorical(keys, logits, block=32):
    return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def stock_argmax(logits):
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def stock_logprob(logits, tokens):
    return jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]


def einsum_attend_shared(q, prompt_k, prompt_v, prompt_visible, new_k, new_v, step):
    """`generate._attend_shared` with both parts as einsums (a row's own tokens too)."""
    r, _, h, d = q.shape
    b, kv, _, _ = prompt_k.shape
    n, g, t = r // b, h // kv, new_k.shape[2]
    s1 = jnp.einsum("bnkgd,bksd->bnkgs", q.reshape(b, n, kv, g, d), prompt_k) * d ** -0.5
    s1 = jnp.where(prompt_visible[:, None, None, None, :], s1, gen._MASKED)
    s2 = jnp.einsum("rkgd,rksd->rkgs", q.reshape(r, kv, g, d), new_k) * d ** -0.5
    s2 = jnp.where(jnp.arange(t) <= step, s2, gen._MASKED).reshape(b, n, kv, g, t)
    top = jnp.maximum(jnp.max(s1, axis=-1, keepdims=True), jnp.max(s2, axis=-1, keepdims=True))
    e1, e2 = jnp.exp(s1 - top), jnp.exp(s2 - top)
    z = jnp.sum(e1, axis=-1, keepdims=True) + jnp.sum(e2, axis=-1, keepdims=True)
    o = jnp.einsum("bnkgs,bksd->bnkgd", e1 / z, prompt_v).reshape(r, kv, g, d)
    o = o + jnp.einsum("rkgs,rksd->rkgd", (e2 / z).reshape(r, kv, g, t), new_v)
    return o.reshape(r, 1, h, d).astype(q.dtype)


SAMPLER = {"categorical": stock_categorical, "first_argmax": stock_argmax, "token_logprob": stock_logprob}
ATTENTION = {"_attend_shared": einsum_attend_shared}
VARIANTS = [("ours", {}), ("stock sampler", SAMPLER), ("einsum own-token attention", ATTENTION),
            ("stock (both)", {**SAMPLER, **ATTENTION})]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--prompts", type=int, default=128)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--new", type=int, default=33)
    args = ap.parse_args()
    from configs import demo

    config = demo.get_config()
    model = models.init_model(models.Qwen2Config(vocab_size=config.world.vocab_size, **dict(config.arch)), seed=0)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(10, 500, size=int(rng.integers(60, 86))).tolist() for _ in range(args.prompts)]
    generator = gen.Generator(model)
    mine = {name: getattr(gen, name) for name in {**SAMPLER, **ATTENTION}}
    rows = []
    for label, swap in VARIANTS:
        for name, fn in {**mine, **swap}.items():
            setattr(gen, name, fn)
        jax.clear_caches()  # the decode program is traced again with the swapped functions
        call = lambda: generator.generate(prompts, args.new, n=args.n, temperature=1.0, seeds=list(range(len(prompts))))
        seconds = median_time(call, args.repeats)
        rows.append((label, seconds))
    for name, fn in mine.items():
        setattr(gen, name, fn)
    tokens = args.prompts * args.n * args.new
    print(f"{args.prompts} prompts x {args.n} samples x {args.new} new tokens, demo policy, median of {args.repeats}")
    print("| variant | s / call | new tokens/s | ms per new token (prefill included) |")
    print("|---|---|---|---|")
    for label, seconds in rows:
        print(f"| {label} | {seconds:.3f} | {tokens / seconds:.0f} | {seconds / args.new * 1e3:.1f} |")
    print(f"decode ratio: {rows[-1][1] / rows[0][1]:.2f}")


if __name__ == "__main__":
    main()

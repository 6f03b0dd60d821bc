"""SFT training throughput: our jitted train step vs a plain PyTorch loop over transformers' Qwen2.

Both train the same randomly initialised Qwen2 (weights copied through an HF checkpoint) on the same
batch with AdamW, fp32, on this machine's CPU. Two more rows are our step traced with a formulation it
replaced: attention over the whole score matrix (`attend`) instead of causal query blocks
(`attend_causal`), and the MLP's matmuls over [batch, seq, hidden] instead of 2-D tokens.
The sides take turns: `--repeats` rounds, each timing a window of `--steps` steps per side after a
warm-up; the table shows the median tokens/s. The last line is `train ratio: X` (ours / PyTorch).

    .venv/bin/python benchmarks/bench_train.py [--hidden 256 --layers 4 --batch 4 --seq 256]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402


def qwen_config(args):
    from transformers import Qwen2Config

    return Qwen2Config(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                       num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
                       max_position_embeddings=args.seq * 2, tie_word_embeddings=False, torch_dtype="float32")


def flops_per_token(cfg, seq: int) -> float:
    """Model FLOPs of one training token: 6 x (matmul parameters) + 12 x layers x hidden x seq (attention).

    MFU on an accelerator = tokens/s x flops_per_token / (chips x peak FLOP/s per chip).
    """
    h, f, n, v = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = cfg.num_key_value_heads * (h // cfg.num_attention_heads)
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * f  # q, o; k, v; gate, up, down
    return 6 * (n * per_layer + h * v) + 12 * n * h * seq


def time_windows(sides: dict, steps: int, repeats: int) -> dict[str, list[float]]:
    """Seconds per step of `repeats` windows of `steps` calls per side, the sides taking turns so that
    machine noise falls on all of them (each `step` must block until done)."""
    out = {name: [] for name in sides}
    for _ in range(repeats):
        for name, step in sides.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            out[name].append((time.perf_counter() - t0) / steps)
    return out


def torch_side(hf_dir: str, tokens, args):
    import torch
    from transformers import Qwen2ForCausalLM

    model = Qwen2ForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    ids = torch.tensor(tokens, dtype=torch.long)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    return step


def mlp_3d(self, x):
    """`qwen2.MLP.__call__` before 2026-11-29: matmuls over [batch, seq, hidden] (XLA:CPU then writes the
    SiLU gradient transposed for the weight gradients)."""
    dt = x.dtype
    return (jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))) @ self.down[...].astype(dt)


def baselines() -> dict:
    """Row name -> (owner, attribute, replaced formulation) for the sides traced with an older formulation."""
    from rstar_jax.models import qwen2

    return {"ours, whole matrix": (qwen2, "attend_causal", qwen2.attend),
            "ours, MLP 3-D tokens": (qwen2.MLP, "__call__", mlp_3d)}


def jax_side(hf_dir: str, tokens, args, swap: tuple | None = None):
    import numpy as np

    from configs import base
    from rstar_jax import models
    from rstar_jax.train import common, sft, trainer

    cfg = base.train_config()
    cfg.update({"learning_rate": args.lr, "batch_size": args.batch, "warmup_ratio": 0.0, "schedule": "constant"})
    model = models.load_hf(hf_dir, dtype="float32")  # fp32 weights and compute, like the torch side
    setup = common.setup_training(model, sft.sft_loss, cfg, 10**6, None)
    b, L = tokens.shape
    batch = trainer.to_global({
        "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": np.ones((b, L - 1), np.float32),
        "segment_ids": np.ones((b, L - 1), np.int32), "positions": np.tile(np.arange(L - 1, dtype=np.int32), (b, 1)),
    }, None)
    state = [setup.state.params, setup.state.opt_state]

    def step():
        state[0], state[1], metrics = setup.train_step(state[0], state[1], setup.state.rest, batch,
                                                         setup.learning_rates[0])
        jax.block_until_ready(metrics["loss"])

    if swap is None:
        step()  # compile + warm-up
        return step
    owner, name, older = swap  # a baseline: traced (at the first call) with the older formulation
    current = getattr(owner, name)
    setattr(owner, name, older)
    try:
        step()
    finally:
        setattr(owner, name, current)
    return step


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv_heads", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-4)
    args = p.parse_args()

    import numpy as np
    import torch
    from transformers import Qwen2ForCausalLM

    cfg = qwen_config(args)
    torch.manual_seed(0)
    tokens = np.random.default_rng(0).integers(0, args.vocab, (args.batch, args.seq + 1)).astype(np.int32)
    with tempfile.TemporaryDirectory() as hf_dir:
        Qwen2ForCausalLM(cfg).save_pretrained(hf_dir)
        # torch sees seq+1 tokens and shifts inside (seq predictions); ours gets seq inputs and seq targets
        sides = {"ours (jax jit)": jax_side(hf_dir, tokens, args),
                 **{name: jax_side(hf_dir, tokens, args, swap) for name, swap in baselines().items()},
                 "pytorch eager": torch_side(hf_dir, tokens, args)}
    secs = time_windows(sides, args.steps, args.repeats)
    ours, theirs = secs["ours (jax jit)"], secs["pytorch eager"]

    n_tok = args.batch * args.seq
    fpt = flops_per_token(cfg, args.seq)
    print(f"model: Qwen2 hidden={args.hidden} layers={args.layers} vocab={args.vocab}; batch {args.batch} x "
          f"seq {args.seq}; fp32 AdamW; CPU threads torch={torch.get_num_threads()}")
    print(f"{'':20} {'median s/step':>14} {'tokens/s':>10} {'min..max tokens/s':>20} {'model GFLOP/s':>14}")
    for name, xs in secs.items():
        med = statistics.median(xs)
        print(f"{name:20} {med:14.4f} {n_tok / med:10.0f} {n_tok / max(xs):9.0f}..{n_tok / min(xs):<9.0f} "
              f"{n_tok / med * fpt / 1e9:14.2f}")
    for name in baselines():
        print(f"ours vs {name.removeprefix('ours, ')}: {statistics.median(secs[name]) / statistics.median(ours):.2f}x")
    print(f"MFU = tokens/s x {fpt:.4g} FLOP/token / (chips x peak FLOP/s); "
          "flop/token = 6 x matmul params + 12 x layers x hidden x seq")
    ratio = statistics.median(theirs) / statistics.median(ours)
    print(f"train ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()

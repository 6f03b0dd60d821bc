"""Process preference model training: pairwise loss -log sigmoid(r_pos - r_neg), weighted 1/(n_pos*n_neg).

The PPM scores prompt+step: a value head at its last real token, a log-prob head by the step tokens'
log-probability (`rstar_jax.models.Qwen2PPM`); a pair's two steps share one row, after one copy of the
prompt (`Qwen2PPM.pair_rewards`). The batch loss is the weight-normalised mean
sum(w * l) / sum(w) (padding pairs have w = 0). Held-out pairwise accuracy counts the real pairs
whose positive outscores the negative.
Library use (the round loop): `train_ppm(model, tokenizer, pairs, cfg, workdir, mesh=...)`;
command line: `python -m rstar_jax.launch --config=ppm --workdir=W --config.init_checkpoint=HF_DIR
--config.ppm_data=FILE.jsonl` -> `run(config, workdir)`, exporting to `W/export/`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from absl import logging
from etils import epath
from flax import nnx

from rstar_jax.data import pipeline
from rstar_jax.data.selection import PPMPair, read_ppm
from rstar_jax.train import common, trainer


def ppm_loss(model: nnx.Module, batch: dict[str, jax.Array]):
    """Summed weighted pairwise loss, the weights' sum, and sums for accuracy and throughput."""
    r_pos, r_neg = model.pair_rewards(batch["ids"], batch["prefix_len"], batch["pos_len"], batch["neg_len"])
    margin = r_pos.astype(jnp.float32) - r_neg.astype(jnp.float32)
    w = batch["weight"]
    real = (w > 0).astype(jnp.float32)
    row = batch["prefix_len"] + batch["pos_len"] + batch["neg_len"]
    sums = {"correct": jnp.sum(real * (margin > 0)), "pairs": jnp.sum(real),
            "tokens": jnp.sum(row * real).astype(jnp.float32)}
    return jnp.sum(w * -jax.nn.log_sigmoid(margin)), jnp.sum(w), sums


def train_ppm(model: nnx.Module, tokenizer, pairs: Sequence[PPMPair], cfg, workdir: epath.PathLike, *,
              mesh: jax.sharding.Mesh | None = None,
              on_step: Callable[[int, dict], None] | None = None) -> tuple[nnx.Module, dict]:
    """Trains the PPM `model` on `pairs` with the `ppm_train` config section `cfg`; resumes from `workdir`.

    A seeded `cfg.eval_fraction` of the pairs is held out for loss and pairwise accuracy. As with
    `train_sft`, `model`'s buffers are donated: keep the returned model.
    """
    t0 = time.perf_counter()
    workdir = epath.Path(workdir)
    if not pairs:
        raise ValueError("train_ppm: no preference pairs to train on")
    train_pairs, eval_pairs = pipeline.split_holdout(list(pairs), cfg.eval_fraction, cfg.seed)
    tokd = pipeline.tokenize_ppm(tokenizer, train_pairs, cfg.seq_len)
    shard = common.data_shard(mesh)
    num_steps = common.capped_steps(cfg, pipeline.ppm_num_batches(len(tokd), cfg.batch_size, cfg.epochs))
    logging.info("PPM: %d train / %d held-out pairs -> %d steps of %d pairs x %d tokens",
                 len(tokd), len(eval_pairs), num_steps, cfg.batch_size, cfg.seq_len)
    setup = common.setup_training(model, ppm_loss, cfg, num_steps, mesh)

    eval_fn = None
    if eval_pairs:
        eval_tok = pipeline.tokenize_ppm(tokenizer, eval_pairs, cfg.seq_len)

        def held_out(state):
            batches = iter(pipeline.ppm_dataset(eval_tok, rows=setup.micro_rows, epochs=1, seed=cfg.seed,
                                                shard=shard, shuffle=False, prefetch=cfg.prefetch,
                                                min_width=cfg.min_width))
            t = trainer.evaluate(setup.eval_step, state, batches, mesh)
            return {"loss": t["loss_sum"] / max(t["weight"], 1e-12), "accuracy": t["correct"] / max(t["pairs"], 1.0)}

        eval_fn = held_out

    state, history, last_eval = trainer.fit(
        setup.state, step_fn=setup.train_step, learning_rates=setup.learning_rates, mesh=mesh, workdir=workdir,
        eval_fn=eval_fn, on_step=on_step,
        data=lambda: iter(pipeline.ppm_dataset(tokd, rows=cfg.batch_size, epochs=cfg.epochs, seed=cfg.seed,
                                               shard=shard, prefetch=cfg.prefetch, min_width=cfg.min_width,
                                               group=cfg.group)),
        loop=common.loop_config(cfg, num_steps, "ppm"))
    summary = common.summarize(history, last_eval, time.perf_counter() - t0)
    if history:
        summary["final_accuracy"] = history[-1]["correct"] / max(history[-1]["pairs"], 1.0)
    return state.model(), summary


def run(config, workdir: str) -> dict:
    """The `ppm` stage: PPM from `config.init_checkpoint` (fresh value head), trained on `config.ppm_data`."""
    if not config.get("ppm_data"):
        raise ValueError("config.ppm_data is required: a jsonl file of {'prompt', 'pos', 'neg'} lines")
    pairs = read_ppm(config.ppm_data)
    return common.run_stage(config, workdir, kind="ppm",
                            train=lambda model, tok, mesh: train_ppm(
                                model, tok, pairs, config.ppm_train, epath.Path(workdir), mesh=mesh))

"""Policy SFT: packed prompt+response rows, cross-entropy on response tokens only.

Library use (the round loop): `train_sft(model, tokenizer, examples, cfg, workdir, mesh=...)`.
Command line: `python -m rstar_jax.launch --config=sft --workdir=W --config.init_checkpoint=HF_DIR
--config.sft_data=FILE.jsonl` -> `run(config, workdir)`, which exports the result to `W/export/`.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from absl import logging
from etils import epath
from flax import nnx

from rstar_jax.data import pipeline
from rstar_jax.data.selection import SFTExample, read_sft
from rstar_jax.train import common, trainer


def lm_logits(model: nnx.Module, batch: dict[str, jax.Array]) -> jax.Array:
    """Logits of the packed rows: attention stays inside each packed example (segment ids)."""
    return model(batch["inputs"], positions=batch["positions"], segment_ids=batch["segment_ids"])


def token_loss_sums(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of weight x cross-entropy, sum of weights): positions with weight 0 get no gradient at all."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
    return jnp.sum(ce * weights), jnp.sum(weights)


def sft_loss(model: nnx.Module, batch: dict[str, jax.Array]):
    """Masked token loss sums of one batch of packed rows, plus the count of real (non-padding) tokens."""
    loss_sum, weight_sum = token_loss_sums(lm_logits(model, batch), batch["targets"], batch["weights"])
    return loss_sum, weight_sum, {"tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32)}


def train_sft(model: nnx.Module, tokenizer, examples: Sequence[SFTExample], cfg, workdir: epath.PathLike, *,
              mesh: jax.sharding.Mesh | None = None,
              on_step: Callable[[int, dict], None] | None = None) -> tuple[nnx.Module, dict]:
    """Fine-tunes `model` on `examples` with the `train` config section `cfg`; resumes from `workdir`.

    A seeded `cfg.eval_fraction` of the examples is held out for the eval loss. Returns the trained
    model and a summary (steps, first/final and eval loss, wall time). The step donates its input
    buffers, so `model` itself must not be used afterwards: keep the returned one.
    """
    t0 = time.perf_counter()
    workdir = epath.Path(workdir)
    train_ex, eval_ex = pipeline.split_holdout(list(examples), cfg.eval_fraction, cfg.seed)
    tokd = pipeline.tokenize_sft(tokenizer, train_ex, cfg.seq_len)
    shard = common.data_shard(mesh)

    def data(examples_tok, epochs, shuffle, rows, this_shard, prefetch):
        return pipeline.sft_dataset(examples_tok, seq_len=cfg.seq_len, rows=rows, epochs=epochs, seed=cfg.seed,
                                    shard=this_shard, shuffle=shuffle, prefetch=prefetch)

    def batches(passes: int) -> int:
        return pipeline.count_batches(data(tokd, passes, True, cfg.batch_size, pipeline.Shard(), 0))

    epochs, total = cfg.epochs, batches(cfg.epochs)
    while total < cfg.get("min_steps", 0):  # more passes until that many steps (the control matches a round's)
        epochs = max(epochs + 1, -(-cfg.min_steps * epochs // max(total, 1)))
        total = batches(epochs)
    num_steps = common.capped_steps(cfg, total)
    logging.info("SFT: %d train / %d held-out examples -> %d steps of %d rows x %d tokens",
                 len(tokd), len(eval_ex), num_steps, cfg.batch_size, cfg.seq_len)
    setup = common.setup_training(model, sft_loss, cfg, num_steps, mesh)

    eval_fn = None
    if eval_ex:
        eval_tok = pipeline.tokenize_sft(tokenizer, eval_ex, cfg.seq_len)
        rows = setup.micro_rows

        def held_out(state):
            batches = iter(data(eval_tok, 1, False, rows, shard, cfg.prefetch))
            totals = trainer.evaluate(setup.eval_step, state, batches, mesh)
            return {"loss": totals["loss_sum"] / max(totals["weight"], 1.0)}

        eval_fn = held_out

    state, history, last_eval = trainer.fit(
        setup.state, step_fn=setup.train_step, learning_rates=setup.learning_rates, mesh=mesh, workdir=workdir,
        eval_fn=eval_fn, on_step=on_step,
        data=lambda: iter(data(tokd, epochs, True, cfg.batch_size, shard, cfg.prefetch)),
        loop=common.loop_config(cfg, num_steps, "sft"))
    summary = common.summarize(history, last_eval, time.perf_counter() - t0)
    return state.model(), summary


def run(config, workdir: str) -> dict:
    """The `sft` stage: load `config.init_checkpoint`, train on `config.sft_data`, export to `workdir/export`."""
    if not config.get("sft_data"):
        raise ValueError("config.sft_data is required: a jsonl file of {'query', 'response'} lines")
    examples = read_sft(config.sft_data)
    return common.run_stage(config, workdir, kind="policy",
                            train=lambda model, tok, mesh: train_sft(
                                model, tok, examples, config.train, epath.Path(workdir), mesh=mesh))

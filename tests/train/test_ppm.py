"""PPM trainer: learns a synthetic step preference (held-out pairwise accuracy), weighted pairwise loss."""
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax.data.selection import PPMPair
from rstar_jax.steps import build_prompt
from rstar_jax.tokenizer import train_demo_tokenizer
from rstar_jax.train import ppm


def _pairs(n: int, seed: int = 0) -> list[PPMPair]:
    """Positive steps print a sum; negative ones divide by zero. Prompts and numbers vary."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        prompt = build_prompt(f"What is {a} plus {b}?") + "<code>\n# Step 1: read the numbers\n<end_of_step>"
        pos = f"# Step 2: add\ns = {a} + {b}\nprint(s)\n<end_of_step>"
        neg = f"# Step 2: add\ns = {a} / 0\nprint(s)\n<end_of_step>"
        out.append(PPMPair(prompt, pos, neg, rng.randint(1, 2), 2))
    return out


@pytest.mark.parametrize("head", ["value", "logprob"])
def test_ppm_stage_learns_a_synthetic_preference(tmp_path, head):
    """The command-line stage: a policy checkpoint in, PPM (fresh value head, or the LM head) trained,
    HF export out."""
    from configs import ppm as ppm_config
    from rstar_jax.data import pipeline
    from rstar_jax.data.selection import write_ppm
    from rstar_jax.models import load_hf_ppm, save_hf
    from tiny_models import TinyLM

    pairs = _pairs(60)
    tok = train_demo_tokenizer([p.prompt + p.pos + p.neg for p in pairs], vocab_size=320)
    save_hf(TinyLM(tok.vocab_size), tmp_path / "policy")
    tok.save(tmp_path / "policy")
    write_ppm(tmp_path / "pairs.jsonl", pairs)
    config = ppm_config.get_config()
    config.init_checkpoint = str(tmp_path / "policy")
    config.ppm_data = str(tmp_path / "pairs.jsonl")
    config.model.dtype = "float32"
    config.mesh.update({"data": 2, "fsdp": 2, "tensor": 2})
    config.ppm_train.head = head
    config.ppm_train.update({"learning_rate": 2e-3, "epochs": 6, "batch_size": 8, "seq_len": 96,
                             "eval_fraction": 0.25, "log_every": 5, "checkpoint_every": 1000, "prefetch": 2})
    summary = ppm.run(config, str(tmp_path / "run"))
    assert summary["eval_accuracy"] >= 0.95
    assert summary["final_loss"] < 0.1 < summary["first_loss"]
    # the exported PPM keeps its trained head and ranks unseen pairs the same way, scoring each step alone
    exported = load_hf_ppm(tmp_path / "run" / "export")
    assert exported.head == head
    score = lambda side: exported(*_alone(tok, _pairs(20, seed=1), side))  # noqa: E731
    assert float(jnp.mean(score("pos") > score("neg"))) >= 0.95


def _alone(tok, pairs, side: str) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Right-padded prompt + step rows of one side of `pairs`, their lengths and where each step starts."""
    rows = [(tok.encode(p.prompt), tok.encode(getattr(p, side))) for p in pairs]
    width = max(len(a) + len(b) for a, b in rows)
    ids = np.full((len(rows), width), tok.pad_id, np.int32)
    for i, (a, b) in enumerate(rows):
        ids[i, : len(a) + len(b)] = a + b
    return (jnp.asarray(ids), jnp.asarray([len(a) + len(b) for a, b in rows], jnp.int32),
            jnp.asarray([len(a) for a, _ in rows], jnp.int32))


def test_pairwise_loss_weights_and_accuracy():
    class Fixed:  # rewards are the row's first two ids: the loss is a known function of them
        def pair_rewards(self, ids, prefix_len, pos_len, neg_len):
            return ids[:, 0].astype(jnp.float32), ids[:, 1].astype(jnp.float32)

    batch = {"ids": jnp.array([[3, 1, 0], [1, 2, 0], [5, 0, 0]]), "prefix_len": jnp.array([1, 1, 1]),
             "pos_len": jnp.array([1, 1, 1]), "neg_len": jnp.array([1, 1, 1]),
             "weight": jnp.array([0.5, 0.25, 0.0])}  # the last pair is padding
    loss_sum, weight_sum, sums = ppm.ppm_loss(Fixed(), batch)
    want = 0.5 * -np.log(jax.nn.sigmoid(2.0)) + 0.25 * -np.log(jax.nn.sigmoid(-1.0))
    assert float(loss_sum) == pytest.approx(want, rel=1e-6)
    assert float(weight_sum) == 0.75
    assert (float(sums["correct"]), float(sums["pairs"]), float(sums["tokens"])) == (1.0, 2.0, 6.0)


@pytest.mark.parametrize("head", ["value", "logprob"])
def test_shared_rows_score_each_step_as_if_alone_and_ignore_cut_padding(head):
    """A pair's row (prompt once, then both steps) gives each step the reward the PPM gives prompt + step
    alone, however the pipeline cut the batch's padding."""
    from rstar_jax.data import pipeline
    from rstar_jax.models import Qwen2Config, init_model

    pairs = _pairs(6)
    tok = train_demo_tokenizer([p.prompt + p.pos + p.neg for p in pairs], vocab_size=320)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    model = init_model(cfg, seed=0, ppm=True, head_init_std=0.5, ppm_head=head)
    tokd = pipeline.tokenize_ppm(tok, pairs, 256)
    full, cut = (next(iter(pipeline.ppm_dataset(tokd, rows=6, epochs=1, seed=0, shuffle=False, min_width=w)))
                 for w in (0, 16))
    assert cut["ids"].shape[1] < 256
    for batch in (full, cut):
        got = model.pair_rewards(*(jnp.asarray(batch[k]) for k in ("ids", "prefix_len", "pos_len", "neg_len")))
        for side, reward in zip(("pos", "neg"), got):
            alone = model(*_alone(tok, pairs, side))
            np.testing.assert_allclose(np.asarray(reward), np.asarray(alone), rtol=1e-5, atol=1e-5)
            assert np.ptp(np.asarray(alone)) > 1e-3  # the rewards differ by pair, so a misread position would show

"""The TPU round configs (round1..round4) and `eval`, run for real on CPU with tiny-model overrides.

A user runs `--config=round1`, then `round2`, ... in one workdir; each round reads the previous
round's exports from it. Here the base is a tiny random Qwen2 with a demo tokenizer, the problems
are a few toy-world ones in a jsonl, and only sizes are overridden (model numerics stay the round
configs' bf16), so what is tested is the configs' own wiring: paths, stages, PPM use from round 3,
round 4's extra rollouts, and the eval stage.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from rstar_jax import launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS = ["round1", "round2", "round3", "round4"]

# Sizes only: a few problems, short steps, tiny batches.
TINY = ["--config.mcts.num_children=2", "--config.mcts.max_step_tokens=24", "--config.mcts.batch_trees=4",
        "--config.mcts.max_nodes=64", "--config.mcts.temperature=1.0", "--config.sandbox.workers=2",
        "--config.sandbox.timeout_s=2.0", "--config.sandbox.memory_mb=512", "--config.eval.samples=2",
        "--config.eval.max_tokens=48", "--config.eval.mcts_overrides.num_children=2",
        "--config.eval.mcts_overrides.rollouts=2", "--config.eval.mcts_overrides.runs=2",
        "--config.eval.mcts_overrides.vote_top_k=2"]
for _sec in ("train", "ppm_train"):
    TINY += [f"--config.{_sec}.seq_len=256", f"--config.{_sec}.micro_batch_size=0", f"--config.{_sec}.batch_size=4",
             f"--config.{_sec}.epochs=1", f"--config.{_sec}.learning_rate=0.001", f"--config.{_sec}.checkpoint_every=1000"]
for _r in (1, 2, 3, 4):
    TINY.append(f"--config.round{_r}.rollouts=2")
TINY.append("--config.round4.extra_rollouts=(2,)")


def _launch(name, workdir, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "rstar_jax.launch", f"--config={name}", f"--workdir={workdir}",
                           *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, XLA_FLAGS=""))


@pytest.mark.parametrize("name", ROUNDS + ["eval"])
def test_round_configs_dry_run_with_tiny_overrides(name, tmp_path):
    r = _launch(name, tmp_path, "--dry_run", *TINY, "--config.problems=p.jsonl", "--config.base_checkpoint=b")
    assert r.returncode == 0, r.stderr[-2000:]
    config = json.loads(r.stdout)
    assert config["mcts"]["num_children"] == 2 and config["model"]["dtype"] == "bfloat16"
    if name != "eval":
        assert config["first_round"] == config["last_round"] == int(name[-1])


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random Qwen2 + demo tokenizer (HF layout) and toy problems in jsonl."""
    from rstar_jax import models
    from rstar_jax.data import toyworld
    from rstar_jax.data.problems import save_problems
    from rstar_jax.tokenizer import train_demo_tokenizer

    d = tmp_path_factory.mktemp("tiny_base")
    split = toyworld.splits(0, n_train=40, n_pool=4, n_heldout=3, levels=(1, 2))
    tok = train_demo_tokenizer(toyworld.tokenizer_corpus(split["train"], np.random.default_rng(0)), vocab_size=320)
    cfg = models.Qwen2Config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                             max_position_embeddings=512, tie_word_embeddings=True)
    models.save_hf(models.init_model(cfg, seed=0), d / "base")
    tok.save(d / "base")
    save_problems(d / "pool.jsonl", [p.to_problem() for p in split["pool"]])
    save_problems(d / "heldout.jsonl", [p.to_problem() for p in split["heldout"]])
    return d


def test_rounds_one_to_four_then_eval_run_in_one_workdir(tiny_base, tmp_path):
    d = tiny_base
    paths = [f"--config.problems={d}/pool.jsonl", f"--config.eval_problems={d}/heldout.jsonl",
             f"--config.base_checkpoint={d}/base"]
    wd = tmp_path / "run"
    for name in ROUNDS:
        r = _launch(name, wd, *TINY, *paths)
        assert r.returncode == 0, f"{name}: {r.stderr[-3000:]}"
        n = int(name[-1])
        for stage in ("search", "select", "policy", "ppm", "eval"):
            assert (wd / f"round_{n}/{stage}/DONE.json").exists(), (name, stage)
        search = json.loads((wd / f"round_{n}/search/DONE.json").read_text())
        assert search["problems"] == 4
    # Round 4 gives every problem still unsolved after its first search a fresh one (a tree of the
    # random tiny policy may end early when all its candidates die, but each search rolls out once).
    done = json.loads((wd / "round_4/search/DONE.json").read_text())
    assert done["rollouts"] >= 4 + (4 - done["solved"])
    report = json.loads((wd / "report.json").read_text())
    assert [x["round"] for x in report["rounds"]] == [0, 1, 2, 3, 4]  # round1 also evaluates the base
    final = json.loads((wd / "round_4/eval/DONE.json").read_text())
    assert final["mcts_ppm"] is not None and final["majority"] is not None
    r = _launch("eval", tmp_path / "eval", *TINY, f"--config.eval_problems={d}/heldout.jsonl",
                f"--config.init_checkpoint={wd}/round_4/policy/export", f"--config.ppm_checkpoint={wd}/round_4/ppm/export",
                f"--config.tokenizer={d}/base")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "eval/eval.json").read_text())
    assert result["problems"] == 3 and 0.0 <= result["greedy"] <= 1.0 and result["mcts_ppm"] is not None


def test_every_round_config_is_a_launch_config():
    assert set(ROUNDS + ["eval"]) <= set(launch.available_configs())

"""SFT trainer: memorisation + greedy reproduction, masked prompt gradients, accumulation, mesh, resume."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import base
from rstar_jax.data import pipeline
from rstar_jax.data.selection import SFTExample
from rstar_jax.steps import build_prompt
from rstar_jax.tokenizer import train_demo_tokenizer
from rstar_jax.train import common, sft
from tiny_models import TinyLM

EXAMPLES = [SFTExample(f"What is {a} + {b}?", f"<code>\n# Step 1: add\nx = {a} + {b}\n<end_of_step>"
                       f"<answer>\\boxed{{{a + b}}}<end_of_answer>") for a, b in [(3, 4), (12, 5), (7, 9), (20, 1)]]


@pytest.fixture(scope="module")
def tok():
    return train_demo_tokenizer([build_prompt(e.query) + e.response for e in EXAMPLES] * 4, vocab_size=320)


def train_cfg(**kw):
    cfg = base.train_config()
    cfg.update({"learning_rate": 3e-3, "epochs": 4, "batch_size": 4, "seq_len": 128, "warmup_ratio": 0.05,
                "eval_fraction": 0.0, "log_every": 5, "checkpoint_every": 3, "prefetch": 0, **kw})
    return cfg


def params_of(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def losses(summary_history):
    return np.array([m["loss"] for m in summary_history])


def _train(tok, tmp_path, name, examples=EXAMPLES, mesh=None, on_step=None, **kw):
    history = []

    def record(step, metrics):
        history.append(float(metrics["loss"]))
        if on_step:
            on_step(step, metrics)

    model, summary = sft.train_sft(TinyLM(tok.vocab_size), tok, examples, train_cfg(**kw), tmp_path / name,
                                   mesh=mesh, on_step=record)
    return model, summary, np.array(history)


def greedy(model, tok, prompt: str, max_new: int, width: int = 128) -> str:
    """Greedy decoding by full forwards over a fixed-width window (one compile)."""
    forward = nnx.jit(lambda m, x: m(x))
    ids = tok.encode(prompt)
    start = len(ids)
    for _ in range(max_new):
        window = np.zeros((1, width), np.int32)
        window[0, : len(ids)] = ids
        nxt = int(jnp.argmax(forward(model, jnp.asarray(window))[0, len(ids) - 1]))
        if nxt == tok.eos_id:
            return tok.decode(ids[start:])
        ids.append(nxt)
    return "<no eos>"


def test_sft_stage_memorises_and_the_export_greedily_reproduces(tok, tmp_path):
    """The command-line stage end to end: HF checkpoint in, train on a 4x2 mesh, HF export out."""
    from configs import sft as sft_config
    from rstar_jax.data.selection import write_sft
    from rstar_jax.models import load_hf, save_hf

    save_hf(TinyLM(tok.vocab_size), tmp_path / "init")
    tok.save(tmp_path / "init")
    write_sft(tmp_path / "sft.jsonl", EXAMPLES)
    config = sft_config.get_config()
    config.init_checkpoint = str(tmp_path / "init")
    config.sft_data = str(tmp_path / "sft.jsonl")
    config.model.dtype = "float32"
    config.mesh.update({"data": 1, "fsdp": 4, "tensor": 2})
    config.train.update(train_cfg(epochs=120, checkpoint_every=1000))
    summary = sft.run(config, str(tmp_path / "run"))
    assert summary["steps"] == 120 and summary["final_loss"] < 0.05 < 4 < summary["first_loss"]
    exported = load_hf(tmp_path / "run" / "export")
    for e in EXAMPLES:
        assert greedy(exported, tok, build_prompt(e.query), 64) == e.response


def test_prompt_tokens_get_no_gradient(tok):
    tokd = pipeline.tokenize_sft(tok, EXAMPLES, 128)
    batch = {k: jnp.asarray(v) for k, v in next(iter(pipeline.sft_dataset(
        tokd, seq_len=128, rows=2, epochs=1, seed=0, prefetch=0))).items()}
    model = TinyLM(tok.vocab_size)
    logits = nnx.jit(sft.lm_logits)(model, batch)
    g = jax.grad(lambda lg: sft.token_loss_sums(lg, batch["targets"], batch["weights"])[0])(logits)
    per_pos = jnp.abs(g).sum(-1)
    prompt_pos = (batch["weights"] == 0) & (batch["segment_ids"] > 0)
    assert bool(jnp.all(per_pos[prompt_pos] == 0)) and bool(jnp.all(per_pos[batch["weights"] > 0] > 0))
    # end to end: scrambling every prompt target leaves the parameter gradients bit-identical
    scrambled = dict(batch, targets=jnp.where(batch["weights"] == 0, (batch["targets"] + 7) % 50, batch["targets"]))
    graphdef, params = nnx.split(model)
    grad = jax.jit(jax.grad(lambda p, b: sft.sft_loss(nnx.merge(graphdef, p), b)[0]))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(grad(params, batch)),
                                                      jax.tree.leaves(grad(params, scrambled))))


def test_accumulation_matches_the_full_batch(tok, tmp_path):
    m1, _, full = _train(tok, tmp_path, "full", epochs=2)
    m2, _, accum = _train(tok, tmp_path, "accum", epochs=2, micro_batch_size=1)
    np.testing.assert_allclose(accum, full, rtol=1e-5)
    for a, b in zip(params_of(m1), params_of(m2)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5)  # Adam rescales tiny gradient noise


def test_mesh_loss_curve_equals_single_device(tok, tmp_path):
    _, _, single = _train(tok, tmp_path, "single", epochs=3)
    mesh = jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 3)
    with jax.set_mesh(mesh):
        model, _, sharded = _train(tok, tmp_path, "mesh", epochs=3, mesh=mesh)
    np.testing.assert_allclose(sharded, single, rtol=1e-5)
    kernel = nnx.state(model, nnx.Param)["lm_head"].get_value()
    assert kernel.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")


class Crash(Exception):
    pass


def test_killed_run_resumes_to_identical_parameters(tok, tmp_path):
    import json

    run = dict(epochs=4, batch_size=2, seq_len=64, prefetch=2, log_every=1)  # grain prefetch thread on
    straight, _, curve = _train(tok, tmp_path, "straight", **run)
    assert len(curve) >= 6

    def crash(step, _):
        if step == 5:
            raise Crash

    with pytest.raises(Crash):
        _train(tok, tmp_path, "killed", on_step=crash, **run)  # last checkpoint: step 3
    resumed, summary, rest = _train(tok, tmp_path, "killed", **run)
    assert summary["steps"] == len(curve) - 3
    np.testing.assert_array_equal(rest, curve[3:])
    for a, b in zip(params_of(straight), params_of(resumed)):
        np.testing.assert_array_equal(a, b)
    lines = (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, len(curve) + 1))
    with pytest.raises(ValueError, match="belongs to a run of"):
        _train(tok, tmp_path, "killed", **dict(run, epochs=5))


def test_eval_loss_on_held_out_examples(tok, tmp_path):
    many = EXAMPLES * 5
    _, summary, _ = _train(tok, tmp_path, "eval", examples=many, epochs=1, eval_fraction=0.2)
    assert summary["eval_loss"] > 0 and np.isfinite(summary["eval_loss"])
    assert (tmp_path / "eval" / "tensorboard").exists() and (tmp_path / "eval" / "metrics.jsonl").exists()


@pytest.mark.slow  # two fresh jax runtimes: ~60-90 s on 2 shared cores
def test_two_process_run_matches_one_process(tok, tmp_path):
    import json
    import os
    import socket
    import subprocess
    import sys

    _, _, single = _train(tok, tmp_path, "one", epochs=3)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    worker = os.path.join(os.path.dirname(__file__), "dist_worker.py")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, worker, str(i), str(port), str(tmp_path / "two")], env=env, cwd=root,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    try:
        outs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs[0][-3000:] + outs[1][-3000:]
    two = np.array(json.loads((tmp_path / "two" / "curve.json").read_text()))
    np.testing.assert_allclose(two, single, rtol=1e-5)


def test_bf16_compute_keeps_fp32_master_weights(tok, tmp_path):
    import jax.numpy as jnp

    from rstar_jax.models import init_model
    from tiny_models import tiny_config

    model = init_model(tiny_config(tok.vocab_size), dtype=jnp.bfloat16)
    before = [np.array(p) for p in params_of(model)]  # the trainer donates the model's buffers
    trained, summary = sft.train_sft(model, tok, EXAMPLES, train_cfg(epochs=15), tmp_path / "bf16")
    assert {p.dtype for p in params_of(trained)} == {jnp.dtype(jnp.float32)}
    assert summary["final_loss"] < 0.7 * summary["first_loss"]
    # updates smaller than bf16's resolution still land in the fp32 master copy
    deltas = [np.abs(np.asarray(a) - b) for a, b in zip(params_of(trained), before)]
    assert any(((d > 0) & (d < 1e-3)).any() for d in deltas)


def test_max_steps_stops_early_with_the_schedule_spanning_the_cap(tok, tmp_path):
    full = _train(tok, tmp_path, "full", epochs=4)
    capped = _train(tok, tmp_path, "capped", epochs=4, max_steps=3)
    assert full[1]["steps"] == 4 and capped[1]["steps"] == 3 and len(capped[2]) == 3
    # the learning rate decays over the 3 steps, so the runs part after the shared warm-up step
    assert capped[2][0] == full[2][0] and not np.allclose(capped[2], full[2][:3])


def test_min_steps_repeats_the_data_until_that_many_steps(tok, tmp_path):
    """The control trains for exactly a round's steps: `min_steps` adds passes, `max_steps` cuts the last one."""
    exact = _train(tok, tmp_path, "exact", epochs=1, min_steps=7, max_steps=7)
    assert exact[1]["steps"] == 7 and len(exact[2]) == 7  # one pass is one step here: 7 passes
    assert _train(tok, tmp_path, "more", epochs=2, min_steps=1)[1]["steps"] == 2  # never fewer than `epochs` give


def test_a_later_stage_reuses_the_compiled_step_at_its_own_rate(tok, tmp_path):
    """Stages differing in rate and length run one train-step program (the rate is an input, not a constant)."""
    rates = {}

    def run(name, lr, epochs):
        seen = rates.setdefault(name, [])
        _train(tok, tmp_path, name, learning_rate=lr, epochs=epochs, on_step=lambda s, m: seen.append(float(m["lr"])))

    run("first", 3e-3, 2)
    compiled = {key: jitted[0]._cache_size() for key, jitted in common._STEPS.items()}
    run("second", 1e-3, 3)
    assert {key: jitted[0]._cache_size() for key, jitted in common._STEPS.items()} == compiled
    assert max(rates["first"]) == pytest.approx(3e-3) and max(rates["second"]) == pytest.approx(1e-3)
    assert len(rates["second"]) > len(rates["first"])

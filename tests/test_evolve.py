import pytest
from etils import epath

from rstar_jax import evolve


def test_run_stage_runs_once_and_records_summary(tmp_path):
    wd = epath.Path(tmp_path)
    calls = []

    def work(d):
        calls.append(d)
        (d / "out.txt").write_text("x")
        return {"n": 3}

    first = evolve.run_stage(wd, "round_1/search", work)
    again = evolve.run_stage(wd, "round_1/search", work)
    assert len(calls) == 1 and calls[0] == wd / "round_1/search"
    assert first["n"] == again["n"] == 3 and "seconds" in again
    assert evolve.stage_done(wd, "round_1/search")["n"] == 3


def test_interrupted_stage_is_redone(tmp_path):
    wd = epath.Path(tmp_path)

    def crash(d):
        (d / "half.txt").write_text("partial")
        raise KeyboardInterrupt

    try:
        evolve.run_stage(wd, "s", crash)
    except KeyboardInterrupt:
        pass
    assert evolve.stage_done(wd, "s") is None
    summary = evolve.run_stage(wd, "s", lambda d: {"saw_partial": (d / "half.txt").exists()})
    assert summary["saw_partial"] is True


@pytest.mark.parametrize("accumulate_data, accumulate_pairs", [(False, False), (True, False), (False, True)])
def test_training_sets_accumulate_rounds_without_repeats(tmp_path, accumulate_data, accumulate_pairs):
    from configs import base
    from rstar_jax.data.selection import PPMPair, SFTExample, read_ppm, read_sft, write_ppm, write_sft

    config = base.get_config()
    config.accumulate_data, config.accumulate_pairs = accumulate_data, accumulate_pairs
    wd = epath.Path(tmp_path)
    a, b, c = (SFTExample(f"q{i}", f"r{i}") for i in range(3))
    p, q, o = PPMPair("x", "good", "bad"), PPMPair("y", "good", "bad"), PPMPair("z", "good", "bad")
    for r, sft, pairs in ((1, [a, b], [o, p]), (2, [b, c], [p, q])):  # what each round's search selected
        write_sft(wd / f"round_{r}/select/sft_round.jsonl", sft)
        write_ppm(wd / f"round_{r}/select/ppm_round.jsonl", pairs)
    d = wd / "round_2/select"
    summary = evolve.Evolution(config, wd, sandbox=None).training_sets(d, 2)
    sft, pairs = read_sft(d / "sft.jsonl"), read_ppm(d / "ppm.jsonl")
    assert sft == ([a, b, c] if accumulate_data else [b, c])
    assert pairs == ([o, p, q] if accumulate_pairs else [p, q])
    assert summary == {"sft_examples": len(sft), "teacher_examples": 0, "ppm_pairs": len(pairs),
                       "rounds": [1, 2] if accumulate_data else [2], "ppm_rounds": [1, 2] if accumulate_pairs else [2]}


def test_world_stage_extends_the_pool_without_touching_train_or_heldout(tmp_path):
    from configs import demo_smoke
    from rstar_jax.data.problems import load_problems

    worlds = {}
    for extra in (0, 5):
        config = demo_smoke.get_config()
        config.world.n_pool_extra = extra
        config.mesh.data = -1  # every (fake) device; the world stage runs no model
        wd = epath.Path(tmp_path) / f"extra{extra}"
        summary = evolve.run_stage(wd, "world", evolve.Evolution(config, wd, sandbox=None).make_world)
        worlds[extra] = {s: load_problems(wd / f"world/{s}.jsonl") for s in ("train", "pool", "heldout")}
        assert summary["problems"]["pool"] == config.world.n_pool + extra
    assert worlds[5]["train"] == worlds[0]["train"] and worlds[5]["heldout"] == worlds[0]["heldout"]
    assert worlds[5]["pool"][: len(worlds[0]["pool"])] == worlds[0]["pool"]
    assert not {p.question for p in worlds[5]["pool"]} & {p.question for p in worlds[5]["train"]}


def test_tail_loss_averages_the_last_tenth_of_logged_steps(tmp_path):
    import json

    path = epath.Path(tmp_path) / "metrics.jsonl"
    rows = [{"step": s, "loss": float(s)} for s in range(20, 220, 20)]  # 10 lines, written out of order
    path.write_text("".join(json.dumps(r) + "\n" for r in rows[::-1] + [{"step": 200, "eval_loss": 0.0}]))
    assert evolve.tail_loss(path) == 200.0
    assert evolve.tail_loss(path, fraction=0.3) == 180.0
    path.write_text(json.dumps({"step": 5, "eval_loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no training loss"):
        evolve.tail_loss(path)


@pytest.mark.parametrize("limit,attempts", [(0.0, 1), (1e-9, 2)])
def test_pretraining_retries_with_the_next_seed_while_the_loss_stays_high(tmp_path, limit, attempts):
    """A base whose last steps' loss stays above `retry_above_loss` is trained again with the next shuffle
    seed; the attempt with the lowest loss is exported, and a rerun redoes no attempt."""
    from configs import demo_smoke

    config = demo_smoke.get_config()
    config.pretrain.epochs = 2
    config.pretrain.retry_above_loss, config.pretrain.retries = limit, 1
    config.mesh.data = -1  # the suite's 8 fake devices
    wd = epath.Path(tmp_path)
    ev = evolve.Evolution(config, wd, sandbox=None)
    evolve.run_stage(wd, "world", ev.make_world)
    summary = evolve.run_stage(wd, "round_0/policy", ev.pretrain)
    done = [evolve.stage_done(wd, f"round_0/policy/attempt_{k}") for k in range(2)]
    assert [s is not None for s in done] == [True] * attempts + [False] * (2 - attempts)
    assert len(summary["tail_losses"]) == attempts
    best = min(range(attempts), key=lambda k: summary["tail_losses"][k])
    assert summary["attempt"] == best and summary["tail_loss"] == summary["tail_losses"][best]
    exported = (wd / "round_0/policy/export/model.safetensors").read_bytes()
    assert exported == (wd / f"round_0/policy/attempt_{best}/export/model.safetensors").read_bytes()
    if attempts == 2:  # different seeds shuffle differently: different weights
        other = (wd / f"round_0/policy/attempt_{1 - best}/export/model.safetensors").read_bytes()
        assert other != exported
    (wd / "round_0/policy" / evolve.DONE).unlink()  # killed after the attempts, before the stage was marked done
    assert evolve.run_stage(wd, "round_0/policy", ev.pretrain)["tail_losses"] == summary["tail_losses"]

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

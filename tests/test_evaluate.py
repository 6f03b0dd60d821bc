"""Evaluation with a tiny random Qwen2: the row cap per generate call bounds memory without changing
any solution; the equal-budget comparison samples best-of-N as the search samples."""
import pytest

from rstar_jax.data import toyworld
from configs.base import eval_config, mcts_config
from rstar_jax.evaluate import equal_budget, sample_solutions
from rstar_jax.generate import Generator
from rstar_jax.mcts.lm_policy import LMPolicy
from rstar_jax.mcts.scorer import PPMScorer
from rstar_jax.models import init_model
from rstar_jax.sandbox import Sandbox
from random_policy import tiny_policy


class CountingGenerator(Generator):
    """The real generator, recording how many sequences each call decodes."""

    def __init__(self, model):
        super().__init__(model)
        self.rows: list[int] = []

        self.temperatures: list[float] = []

    def generate(self, prompts, max_new_tokens, *, n=1, **kw):
        self.rows.append(len(prompts) * n)
        self.temperatures.append(kw.get("temperature"))
        return super().generate(prompts, max_new_tokens, n=n, **kw)


@pytest.fixture(scope="module")
def tiny():
    problems = toyworld.generate_problems(5, seed=0, levels=(1, 2))
    model, tok = tiny_policy(problems)
    with Sandbox(workers=2, timeout_s=5.0, memory_mb=512) as sb:
        yield model, tok, problems, sb


def _sample(tiny, n, max_rows):
    model, tok, problems, sb = tiny
    gen = CountingGenerator(model)
    out = sample_solutions(gen, tok, problems, n, sandbox=sb, temperature=1.0, max_tokens=24, seed=3,
                           max_rows=max_rows)
    return [[(s.text, s.tokens) for s in row] for row in out], gen.rows


def test_row_cap_changes_no_solution(tiny):
    whole, rows = _sample(tiny, 3, 256)
    assert rows[0] == 15 and [len(r) for r in whole] == [3] * 5
    assert len({t for row in whole for t, _ in row}) > 1        # real samples, not one text repeated
    for cap in (3, 7):                                           # one problem per call; two per call
        capped, rows = _sample(tiny, 3, cap)
        assert capped == whole
        assert max(rows) <= cap


def test_more_samples_than_the_cap(tiny):
    out, rows = _sample(tiny, 5, 2)
    assert [len(r) for r in out] == [5] * 5 and max(rows) <= 2
    again, _ = _sample(tiny, 5, 2)
    assert again == out                                          # deterministic for a seed
    first_two, _ = _sample(tiny, 2, 2)
    assert [r[:2] for r in out] == first_two                     # the first group keeps the unsplit seed


def test_bad_row_cap(tiny):
    model, tok, problems, sb = tiny
    with pytest.raises(ValueError, match="max_rows"):
        sample_solutions(Generator(model), tok, problems, 2, sandbox=sb, temperature=1.0, max_rows=0)


def test_equal_budget_samples_at_the_search_temperature(tiny):
    model, tok, problems, sb = tiny
    cfg = eval_config()
    cfg.mcts = mcts_config()
    cfg.mcts.update(num_children=2, rollouts=2, max_step_tokens=12, max_depth=3, temperature=0.9, top_p=1.0)
    cfg.update(temperature=0.3, max_tokens=24)  # the evaluation's own sampler must not be used here
    gen = CountingGenerator(model)
    ppm = PPMScorer(init_model(model.config, seed=1, ppm=True), tok)
    out = equal_budget(gen, tok, LMPolicy(model, tok, cfg.mcts), ppm, problems, cfg, sandbox=sb, seed=0)
    assert gen.temperatures and set(gen.temperatures) == {0.9}
    assert out["problems"] == len(problems) and out["n"] >= 1
    searched = max(out["tokens"]["mcts"], out["tokens"]["mcts_ppm"])
    assert searched > 0 and 0 < out["tokens"]["best_of_n"] <= 3 * searched  # N sized to the search's tokens
    assert all(0.0 <= out[k] <= 1.0 for k in ("mcts", "mcts_ppm", "best_of_n")) and out["explanation"]

"""Evaluation with a tiny random Qwen2: the row cap per generate call bounds memory without changing
any solution; the equal-budget comparison samples best-of-N as the search samples."""
import math

import numpy as np
import pytest

from rstar_jax.data import toyworld
from configs.base import eval_config, mcts_config
from rstar_jax.evaluate import (Solution, equal_budget, evaluate_policy, ranking_accuracy, sample_solutions,
                                solution_scores)
from rstar_jax.generate import Generator
from rstar_jax.mcts.lm_policy import LMPolicy
from rstar_jax.mcts.scorer import PPMScorer
from rstar_jax.models import init_model
from rstar_jax.sandbox import Sandbox
from rstar_jax.steps import build_prompt, split_steps
from random_policy import tiny_policy


class CountingGenerator(Generator):
    """The real generator, recording each call's decoded sequences, temperature and log-probabilities."""

    def __init__(self, model):
        super().__init__(model)
        self.rows: list[int] = []
        self.temperatures: list[float] = []
        self.logprobs: list[list[float]] = []

    def generate(self, prompts, max_new_tokens, *, n=1, **kw):
        self.rows.append(len(prompts) * n)
        self.temperatures.append(kw.get("temperature"))
        out = super().generate(prompts, max_new_tokens, n=n, **kw)
        self.logprobs.append([c.logprob for c in out])
        return out


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


def _sol(correct: bool) -> Solution:
    return Solution("", "1" if correct else "2", correct, 1, 0.0)


def test_ranking_accuracy_counts_right_above_wrong_pairs_within_a_problem():
    rows = [[_sol(True), _sol(False), _sol(False)], [_sol(True), _sol(True)], [_sol(True), _sol(False)]]
    scores = [[3.0, 1.0, 3.0], [0.0, 9.0], [0.0, 2.0]]
    # row 0: 3 > 1 wins, 3 == 3 counts half; row 1 has no wrong solution; row 2: 0 < 2 loses
    assert ranking_accuracy(rows, scores) == pytest.approx(1.5 / 3)
    assert ranking_accuracy(rows[1:2], scores[1:2]) is None


def test_solution_logprob_sums_its_code_and_answer_decodes(tiny):
    model, tok, problems, sb = tiny
    gen = CountingGenerator(model)
    out = sample_solutions(gen, tok, problems, 3, sandbox=sb, temperature=1.0, max_tokens=24, seed=3)
    first = gen.logprobs[0]
    tails = [lp for call in gen.logprobs[1:] for lp in call]
    flat = [s for row in out for s in row]
    assert sum(s.logprob for s in flat) == pytest.approx(sum(first) + sum(tails), abs=1e-3)
    assert all(s.logprob <= 0.0 for s in flat)
    if not tails:                                                # no code finished: each solution is one decode
        assert [s.logprob for s in flat] == pytest.approx(first)


def test_evaluate_policy_reports_how_scores_rank_samples(tiny):
    model, tok, problems, sb = tiny
    cfg = eval_config()
    cfg.update(samples=3, max_tokens=24, temperature=1.0, top_p=1.0, mcts_ppm=False)
    cfg.mcts = mcts_config()
    ppm = PPMScorer(init_model(model.config, seed=1, ppm=True), tok)
    out = evaluate_policy(Generator(model), tok, problems, cfg, sandbox=sb, scorer=ppm)
    assert set(out["ranking"]) == {"policy", "ppm"}
    for v in out["ranking"].values():
        assert v is None or 0.0 <= v <= 1.0
    greedy_only = cfg.copy_and_resolve_references()
    greedy_only.samples = 1
    assert evaluate_policy(Generator(model), tok, problems, greedy_only, sandbox=sb)["ranking"] is None


class StepScorer:
    """A scripted PPM that records what it is asked: 0.5 for a step that ends at <end_of_step>, -0.5 otherwise."""

    def __init__(self):
        self.calls = []

    def score(self, texts, prefixes=None):
        self.calls.append((list(texts), list(prefixes)))
        return np.array([0.5 if t.endswith("<end_of_step>") else -0.5 for t in texts], np.float32)


def test_solution_scores_read_each_step_after_its_prefix_by_the_search_rule():
    problems = toyworld.generate_problems(2, seed=0, levels=(2, 3))
    rng = np.random.default_rng(0)
    rows = [[Solution(toyworld.teacher_solution(p, rng, noise=0.0), "1", True, 1, 0.0)] for p in problems]
    steps = [split_steps(row[0].text) for row in rows]
    assert [len(s) for s in steps] == [4, 5] and all("".join(s) == row[0].text for s, row in zip(steps, rows))
    scorer = StepScorer()
    got = solution_scores(scorer, problems, rows, "prod")
    texts, prefixes = scorer.calls[-1]
    assert len(texts) == 9 and all(t.startswith(p) and t != p for t, p in zip(texts, prefixes))
    assert texts[3] == build_prompt(problems[0].question) + rows[0][0].text and prefixes[4] == build_prompt(problems[1].question)
    assert got == [[pytest.approx(3 * math.log(0.75) + math.log(0.25))], [pytest.approx(4 * math.log(0.75) + math.log(0.25))]]
    assert solution_scores(scorer, problems, rows, "min") == [[-0.5], [-0.5]]
    assert solution_scores(scorer, problems, rows, "last") == [[-0.5], [-0.5]]
    texts, prefixes = scorer.calls[-1]  # by "last" only each solution's final step is scored
    assert texts == [build_prompt(p.question) + row[0].text for p, row in zip(problems, rows)]
    assert [t[len(p):] for t, p in zip(texts, prefixes)] == [s[-1] for s in steps]

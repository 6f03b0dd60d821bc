"""The toy world: seeded problems and splits, the noisy teacher's format, rates and consistency, and lengths."""
import contextlib
import io
import re

import numpy as np
import pytest

from rstar_jax.data import toyworld as tw
from rstar_jax.data.problems import Problem
from rstar_jax.io import InputError
from rstar_jax.steps import build_prompt, program, stop_kind
from rstar_jax.tokenizer import train_demo_tokenizer


def _exec(code: str) -> tuple[str, dict]:
    """Runs trusted teacher code for real; returns (stdout, variables)."""
    env: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code, env)  # noqa: S102 - code written by our own teacher
    return out.getvalue(), env


def _steps(problem, rng, noise):
    """A path built from the first candidate of teacher_next_steps at every depth."""
    steps = []
    for _ in range(problem.level + 2):
        steps.append(tw.teacher_next_steps(problem, steps, 3, rng, noise)[0])
    return steps


@pytest.fixture(scope="module")
def split():
    return tw.splits(0, n_train=600, n_pool=120, n_heldout=240)


def test_generation_is_deterministic_by_seed_and_cycles_levels():
    a, b = tw.generate_problems(48, seed=3), tw.generate_problems(48, seed=3)
    assert a == b
    assert [p.question for p in a] != [p.question for p in tw.generate_problems(48, seed=4)]
    assert [p.level for p in a] == [1, 2, 3, 4, 5, 6] * 8
    assert len({p.question for p in a}) == 48 and len({p.id for p in a}) == 48
    assert all(p.source == "toyworld" and p.level == len(p.ops) for p in a)
    assert {p.level for p in tw.generate_problems(10, seed=0, levels=(2, 5))} == {2, 5}
    # Level 1 has few enough distinct questions that 3000 random draws repeat some; none may be kept twice.
    assert len({p.question for p in tw.generate_problems(3000, seed=0, levels=(1,))}) == 3000


def test_splits_are_deterministic_disjoint_and_balanced(split):
    assert tw.splits(0, n_train=600, n_pool=120, n_heldout=240) == split
    assert {k: len(v) for k, v in split.items()} == {"train": 600, "pool": 120, "heldout": 240}
    texts = [{p.question for p in v} for v in split.values()]
    assert sum(map(len, texts)) == len(set().union(*texts)) == 960
    ids = [p.id for v in split.values() for p in v]
    assert len(set(ids)) == len(ids)
    assert all(sum(p.level == lv for p in split["heldout"]) == 40 for lv in tw.LEVELS)
    # Extra pool problems keep held-out and train (the base model's corpus) and extend the pool.
    bigger = tw.splits(0, n_train=600, n_pool=120, n_heldout=240, n_pool_extra=180)
    assert (bigger["heldout"], bigger["train"]) == (split["heldout"], split["train"])
    assert bigger["pool"][:120] == split["pool"] and len(bigger["pool"]) == 300
    assert len({p.question for v in bigger.values() for p in v}) == 1140
    assert [p.level for p in bigger["pool"][120:126]] == [1, 2, 3, 4, 5, 6]


def test_question_reads_naturally():
    p = tw.ToyProblem.build("x", "Mia", "marbles", 12, [tw.Operation("sub", 0, 5), tw.Operation("mul", 0, 3)])
    assert p.question == "Mia has 12 marbles. She gives away 5. She gets 3 times as many. How many marbles does Mia have now?"
    assert (p.answer, p.level) == ("21", 2)


def test_answers_match_the_clean_teacher_program_run_for_real(split):
    for p in split["train"][:300]:
        steps = _steps(p, np.random.default_rng(0), noise=0.0)
        stdout, _ = _exec(program(steps))
        assert stdout == f"{p.answer}\n"
        assert steps[-1].endswith(f"<output>{p.answer}\n<end_of_output>\n<answer>The answer is \\boxed{{{p.answer}}}<end_of_answer>")
        # Every true intermediate value is a positive integer below MAX_VALUE.
        for k in range(1, len(steps)):
            value = _exec(program(steps[:k]))[1][tw.VARIABLE]
            assert type(value) is int and 0 < value < tw.MAX_VALUE


def test_noisy_solutions_print_what_their_program_really_computes(split):
    rng = np.random.default_rng(1)
    for p in split["pool"]:
        text = tw.teacher_solution(p, rng, noise=2.0)
        steps = re.findall(r".*?(?:<end_of_step>|<end_of_answer>)", text, re.DOTALL)
        assert "".join(steps) == text and len(steps) == p.level + 2
        stdout, _ = _exec(program(steps))
        assert f"<output>{stdout}<end_of_output>" in text and re.fullmatch(r"-?\d+\n", stdout)
        assert text.endswith(f"\\boxed{{{stdout.strip()}}}<end_of_answer>")


@pytest.mark.parametrize("noise", [1.0, 0.5])
def test_wrong_line_rates_follow_the_table(noise):
    rng, draws = np.random.default_rng(2), 3000
    for op, phrasings in tw.PHRASINGS.items():
        for index, phrasing in enumerate(phrasings):
            p = tw.ToyProblem.build("r", "Leo", "coins", 24, [tw.Operation(op, index, 2)])
            cands = tw.teacher_next_steps(p, tw.teacher_next_steps(p, [], 1, rng), draws, rng, noise)
            wrong = np.mean([f"x = x {phrasing.wrong} 2\n" in c for c in cands])
            right = np.mean([f"x = x {tw.SYMBOLS[op]} 2\n" in c for c in cands])
            expected = noise * phrasing.p_wrong
            assert wrong + right == 1.0
            assert abs(wrong - expected) <= 4 * np.sqrt(max(expected * (1 - expected), 1e-4) / draws), (op, index)


def test_clean_teacher_never_errs_and_some_phrasings_are_clean_others_majority_wrong():
    rng = np.random.default_rng(3)
    p = tw.ToyProblem.build("c", "Zoe", "pens", 30, [tw.Operation(op, i, 3) for op in ("add", "sub", "mul") for i in range(3)])
    assert all(f"{tw.SYMBOLS[o.op]} 3\n" in s for _ in range(20) for o, s in zip(p.ops, _steps(p, rng, 0.0)[1:]))
    for phrasings in tw.PHRASINGS.values():
        assert len(phrasings) >= 3
        assert any(ph.p_wrong == 0 for ph in phrasings) and any(ph.p_wrong > 0.5 for ph in phrasings)


def test_majority_following_accuracy_is_in_the_target_band(split):
    heldout = split["heldout"]
    acc = tw.majority_accuracy(heldout)
    assert 0.20 <= acc <= 0.35
    # Independent count: problems with no majority-wrong phrasing (a wrong line rarely lands on the answer).
    clean = np.mean([all(o.phrase.p_wrong <= 0.5 for o in p.ops) for p in heldout])
    assert abs(acc - clean) <= 0.03
    assert tw.majority_accuracy(heldout, noise=0.0) == 1.0
    assert 0.20 <= tw.majority_accuracy(tw.generate_problems(600, seed=11)) <= 0.35


def test_sampling_finds_right_solutions_at_every_level(split):
    rng = np.random.default_rng(4)
    for level in tw.LEVELS:
        problems = [p for p in split["train"] if p.level == level]
        solved = np.mean([_exec(program(_steps(p, rng, 1.0)))[0] == f"{p.answer}\n" for p in problems])
        assert 0.05 <= solved < 0.95, (level, solved)


def test_next_steps_continue_a_path_with_the_right_stop_kinds(split):
    p = split["heldout"][5]  # level 6
    rng = np.random.default_rng(5)
    steps = []
    for depth in range(p.level + 2):
        cands = tw.teacher_next_steps(p, steps, 4, rng, noise=1.0)
        assert len(cands) == 4
        assert {stop_kind(c) for c in cands} == {"answer" if depth == p.level + 1 else "step"}
        if 1 <= depth <= p.level:  # an operation's step quotes its sentence, operand included
            assert all(f"# Step {depth + 1}: {p.ops[depth - 1].phrase.text.format(n=p.ops[depth - 1].operand)}\n" in c
                       for c in cands)
        steps.append(cands[-1])
    assert steps[0].startswith("<code>\n# Step 1: ")
    with pytest.raises(ValueError, match="already complete"):
        tw.teacher_next_steps(p, steps, 1, rng)
    with pytest.raises(ValueError, match=f"never assigns {tw.VARIABLE!r}"):
        tw.teacher_next_steps(p, ["<code>\ny = 1\n<end_of_step>"] * (p.level + 1), 1, rng)


def test_plain_problems_are_parsed_back_into_their_structure(split):
    for p in split["pool"]:
        assert tw.as_toy(p.to_problem()) == p
    p = split["pool"][0]
    with pytest.raises(InputError, match="does not match its question"):
        tw.as_toy(Problem(p.id, p.question, str(int(p.answer) + 1), p.level, "toyworld"))
    with pytest.raises(InputError, match="cannot read the operation"):
        tw.parse_question("Mia has 3 pens. She eats 2. How many pens does Mia have now?", "q7")
    with pytest.raises(InputError, match="'q8'"):
        tw.teacher_next_steps(Problem("q8", "What is 1+1?", "2", None, "math"), [], 1, np.random.default_rng(0))


def test_evaluate_runs_only_teacher_arithmetic():
    assert tw.evaluate("x = 7\nx = x // 2\nx = x * 3 - 1\nprint(x)\n") == {"x": 8}
    for bad in ("import os", "x = y + 1", "x = 2 ** 8", "x = 1.5", "x = = 1"):
        with pytest.raises(ValueError):
            tw.evaluate(bad)


def test_lengths_stay_small_enough_for_a_tiny_model(split):
    rng = np.random.default_rng(6)
    corpus = list(tw.tokenizer_corpus(split["train"], rng))
    assert len(corpus) == 600 and corpus[0].startswith(build_prompt(split["train"][0].question) + "<code>\n")
    tok = train_demo_tokenizer(corpus, vocab_size=512)
    level6 = [p for p in split["heldout"] if p.level == 6]
    lengths = [len(tok.encode(build_prompt(p.question) + tw.teacher_solution(p, rng))) for p in level6]
    assert max(lengths) <= 300 and np.mean(lengths) <= 280  # inside the demo's seq_len 320; fixed overhead ~70
    assert max(len(p.question.split()) for p in split["heldout"]) <= 50
    assert max(int(v) for p in split["train"] for v in re.findall(r"\d+", p.question)) < tw.MAX_VALUE

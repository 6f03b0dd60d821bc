"""Problem sources: MATH and GSM8K shapes, our own round trip, and errors that name file, line and field."""
import json

import pytest

from rstar_jax.data.problems import Problem, load_problems, save_problems
from rstar_jax.grading import last_boxed
from rstar_jax.io import InputError


def _write(tmp_path, rows, name="set.jsonl"):
    path = tmp_path / name
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_math_shape_takes_last_boxed_with_nested_braces_and_level_number(tmp_path):
    path = _write(tmp_path, [
        {"problem": "Compute x.", "solution": "First \\boxed{1}, then $\\boxed{\\frac{1}{2}}$.",
         "level": "Level 3", "type": "Algebra", "unique_id": "test/algebra/1.json"},
        {"problem": "Odd one.", "solution": "So \\boxed{5}.", "level": "Level ?"},
    ], name="math.train.jsonl")
    a, b = load_problems(path)
    assert a == Problem("test/algebra/1.json", "Compute x.", "\\frac{1}{2}", 3, "math")
    assert (b.id, b.answer, b.level) == ("math-2", "5", None)


def test_gsm8k_shape_takes_what_follows_the_marks_without_thousands_separators(tmp_path):
    path = _write(tmp_path, [
        {"question": "How many?", "answer": "She has 3 + 4 = <<3+4=7>>7.\n#### 1,234"},
        {"question": "And now?", "answer": 18, "idx": 7},
    ])
    a, b = load_problems(path)
    assert (a.question, a.answer, a.level, a.id) == ("How many?", "1234", None, "set-1")
    assert (b.answer, b.id) == ("18", "7")


def test_answer_field_wins_over_solution_unless_empty(tmp_path):
    path = _write(tmp_path, [
        {"problem": "p", "answer": " 2/3 ", "solution": "\\boxed{9}"},
        {"problem": "q", "answer": "", "solution": "\\boxed{9}"},
    ])
    assert [p.answer for p in load_problems(path)] == ["2/3", "9"]


def test_save_then_load_round_trips_our_shape(tmp_path):
    problems = [Problem("a", "What is 1+1?", "2", 1, "toyworld"), Problem("b", "Q?", "\\sqrt{2}", None, "math")]
    path = tmp_path / "out" / "problems.jsonl"
    assert save_problems(path, problems) == 2
    assert load_problems(path) == problems
    assert [p.name for p in path.parent.iterdir()] == ["problems.jsonl"]  # no temporary left behind


@pytest.mark.parametrize("row, message", [
    ({"solution": "\\boxed{1}"}, "missing field 'problem' (or 'question')"),
    ({"problem": 5, "answer": "1"}, "field 'problem' must be str"),
    ({"question": "  ", "answer": "1"}, "field 'question' is empty"),
    ({"problem": "p"}, "missing field 'answer'"),
    ({"problem": "p", "solution": "no box here"}, "field 'solution' has no \\boxed{} answer"),
    ({"problem": "p", "solution": "\\boxed{unclosed"}, "field 'solution' has no \\boxed{} answer"),
    ({"problem": "p", "answer": ["1"]}, "field 'answer' must be str or number, got list"),
    ({"problem": "p", "answer": True}, "field 'answer' must be str or number, got bool"),
    ({"question": "p", "answer": "work\n####  "}, "field 'answer' has nothing after '####'"),
    ({"problem": "p", "answer": "1", "level": "hard"}, "field 'level' must be an int"),
    ({"problem": "p", "answer": "1", "id": None}, "field 'id' must be a non-empty str or int"),
    ({"problem": "p", "answer": "1", "source": 3}, "field 'source' must be str"),
    ({"problem": "p", "answer": "1", "id": "x"}, "duplicate id 'x' (first seen on line 1)"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path, [{"problem": "ok", "answer": "1", "id": "x"}, row])
    with pytest.raises(InputError) as e:
        load_problems(path)
    assert str(e.value).startswith(f"{path}:2: ") and message in str(e.value)


def test_not_json_and_missing_file_are_input_errors(tmp_path):
    with pytest.raises(InputError, match=r"set.jsonl:1: not valid JSON"):
        load_problems(_write(tmp_path, ["{oops"]))
    with pytest.raises(InputError, match="file not found"):
        load_problems(tmp_path / "nope.jsonl")


def test_last_boxed():
    assert last_boxed("\\boxed{a} and \\fbox{ {b}c }") == "{b}c"
    assert last_boxed("\\boxed {x^{2}}") == "x^{2}"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"  # an unclosed last box falls back to the one before
    assert last_boxed("nothing") is None

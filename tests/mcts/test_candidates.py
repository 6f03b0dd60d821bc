"""Candidate filtering: dedupe by text and by normalised code, and the one-final-step rule."""
import pytest

from rstar_jax.mcts.candidates import filter_candidates, normalize_code

A = "<code>\n# Step 1: start\nx = 3\n<end_of_step>"
A_COMMENT = "<code>\n# Step 1: begin with three\nx  =  3\n\n<end_of_step>"
B = "<code>\n# Step 1: start\nx = 4\n<end_of_step>"
FINAL1 = "print(x)\n<end_of_code>"
FINAL2 = "print(x + 0)\n<end_of_code>"
ANSWERED = "print(x)\n<end_of_code>\n<output>3\n<end_of_output>\n<answer>\\boxed{3}<end_of_answer>"


def test_text_dedupe_keeps_first_of_identical_texts_only():
    kept, dups = filter_candidates([A, A, A_COMMENT, B, A], "text", one_final=False)
    assert kept == [A, A_COMMENT, B] and dups == 2


def test_code_dedupe_ignores_comments_and_spacing_but_not_code():
    kept, dups = filter_candidates([A, A_COMMENT, B], "code", one_final=False)
    assert kept == [A, B] and dups == 1
    assert normalize_code(A) == normalize_code(A_COMMENT) != normalize_code(B)
    # Same code with a different stop string is a different step.
    assert normalize_code("x = 3\n<end_of_step>") != normalize_code("x = 3\n<end_of_code>")
    # Unparsable code still normalises (line-wise) rather than failing.
    assert normalize_code("s = 'abc\n<end_of_step>") == normalize_code("s = 'abc  \n\n<end_of_step>")


def test_none_keeps_everything():
    assert filter_candidates([A, A], "none", one_final=False) == ([A, A], 0)


def test_one_final_keeps_the_first_final_step():
    kept, dups = filter_candidates([A, FINAL2, B, FINAL1, ANSWERED], "text", one_final=True)
    assert kept == [A, FINAL2, B] and dups == 0
    kept, _ = filter_candidates([FINAL1, FINAL2], "text", one_final=False)
    assert kept == [FINAL1, FINAL2]


def test_bad_mode_is_named():
    with pytest.raises(ValueError, match="mcts.dedupe"):
        filter_candidates([A], "fuzzy", one_final=False)

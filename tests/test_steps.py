from rstar_jax import steps


def test_prompt_is_reference_format():
    p = steps.build_prompt("  What is 2+3?\n")
    assert p == "<|user|>:\nWhat is 2+3?\n<|assistant|>: Let's think step by step and solve the problem with code."


def test_stop_kind():
    assert steps.stop_kind("<code>\n# Step 1\nx = 1\n<end_of_step>") == "step"
    assert steps.stop_kind("\nprint(x)\n<end_of_code>\n") == "code"
    assert steps.stop_kind("\n<answer>\\boxed{1}<end_of_answer>") == "answer"
    assert steps.stop_kind("\nx = 1\n") is None


def test_program_joins_ancestor_code_and_drops_output_and_answer():
    path = [
        "<code>\n# Step 1: apples\napples = 5\n<end_of_step>",
        "\n# Step 2: buy 3\napples = apples + 3\n<end_of_step>",
        "\n# Now print the final answer\nprint(apples)\n<end_of_code>"
        + steps.format_output("8")
        + "<answer>The answer is \\boxed{8}<end_of_answer>",
    ]
    prog = steps.program(path)
    assert "<" not in prog
    assert "\\boxed" not in prog and "8\n" not in prog.replace("apples = 5", "")
    ns: dict = {}
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(prog, ns)
    assert buf.getvalue() == "8\n"


def test_format_output_appends_the_error_after_stdout():
    assert steps.format_output("3\n") == "\n<output>3\n<end_of_output>\n"
    assert steps.format_output("3\n", "NameError: x") == "\n<output>3\nNameError: x<end_of_output>\n"

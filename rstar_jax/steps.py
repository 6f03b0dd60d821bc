"""The code-augmented step format of rStar-Math: prompt, step markers, and turning steps into programs.

A response is a concatenation of steps. Every step but the last is Python (reasoning in comments)
ending with `<end_of_step>`; the first step opens with `<code>`. The final code step ends with
`<end_of_code>`; the program is then executed, `<output>{stdout}<end_of_output>` is appended, and the
policy writes `<answer>... \\boxed{...}<end_of_answer>`. The search keeps code end, output and
answer in one node (the "final step"), so a terminal node's text ends with `<end_of_answer>`.
"""
from __future__ import annotations

import re

PROMPT_TEMPLATE = "<|user|>:\n{question}\n<|assistant|>: Let's think step by step and solve the problem with code."
CODE_START = "<code>"
END_OF_STEP = "<end_of_step>"
END_OF_CODE = "<end_of_code>"
OUTPUT_START = "<output>"
END_OF_OUTPUT = "<end_of_output>"
ANSWER_START = "<answer>"
END_OF_ANSWER = "<end_of_answer>"
STEP_TOKENS = (CODE_START, END_OF_STEP, END_OF_CODE, OUTPUT_START, END_OF_OUTPUT, ANSWER_START, END_OF_ANSWER)
STOP_STRINGS = (END_OF_STEP, END_OF_CODE, END_OF_ANSWER)

_NON_CODE = re.compile(
    re.escape(OUTPUT_START) + r".*?(?:" + re.escape(END_OF_OUTPUT) + r"|$)"
    + r"|" + re.escape(ANSWER_START) + r".*?(?:" + re.escape(END_OF_ANSWER) + r"|$)",
    re.DOTALL,
)


def build_prompt(question: str) -> str:
    """The reference prompt for a question; the response (first step `<code>\\n...`) follows it directly."""
    return PROMPT_TEMPLATE.format(question=question.strip())


def stop_kind(step: str) -> str | None:
    """Which stop string ends `step`: 'step', 'code', 'answer', or None when it ends with none (unparsable)."""
    text = step.rstrip()
    if text.endswith(END_OF_ANSWER):
        return "answer"
    if text.endswith(END_OF_CODE):
        return "code"
    if text.endswith(END_OF_STEP):
        return "step"
    return None


def step_code(step: str) -> str:
    """The Python in one step: markers removed, any output/answer sections dropped, comments kept."""
    text = _NON_CODE.sub("", step)
    for marker in (CODE_START, END_OF_STEP, END_OF_CODE):
        text = text.replace(marker, "")
    return text.strip("\n")


def program(steps: list[str]) -> str:
    """The program a step is verified with: the code of all its ancestors and itself, in order."""
    return "\n".join(code for code in (step_code(s) for s in steps) if code.strip()) + "\n"


def format_output(stdout: str, error: str | None = None) -> str:
    """The observation appended after a final code step: what it printed, then its error if it failed
    (stdout already capped by the sandbox)."""
    return f"\n{OUTPUT_START}{stdout}{error or ''}{END_OF_OUTPUT}\n"


def split_steps(response: str) -> list[str]:
    """A whole response cut back into its steps, each ending at its `<end_of_step>` (the last step takes
    the rest): the inverse of `response_text`, for scoring a sampled solution step by step."""
    parts = response.split(END_OF_STEP)
    steps = [p + END_OF_STEP for p in parts[:-1]]
    return steps + [parts[-1]] if parts[-1] else steps


def response_text(steps: list[str]) -> str:
    """The policy's response for a path of steps (what SFT trains on and the PPM scores)."""
    return "".join(steps)

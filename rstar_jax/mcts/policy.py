"""Step policies: what proposes the candidate next steps of a node, behind one small interface.

The search asks a policy for two things, always in batches across all trees of an iteration:
`propose` (n candidate steps after a path, each ending with a stop string) and `finish` (after a
final code step was executed and its output appended, the rest of that step up to
`<end_of_answer>`). `ScriptedPolicy` gets candidates from a plain function (tests, the bootstrap
teacher); `LMPolicy` in lm_policy.py samples them from a causal LM.
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from rstar_jax.steps import ANSWER_START, END_OF_ANSWER, END_OF_CODE, END_OF_OUTPUT, OUTPUT_START, build_prompt


@dataclasses.dataclass(frozen=True)
class StepRequest:
    """Sample `n` candidate next steps after `steps` (the path so far) for one tree."""

    problem: Any  # anything with .id, .question (.answer is never shown to a policy)
    steps: tuple[str, ...]
    n: int
    seed: int

    @property
    def prompt(self) -> str:
        """Prompt plus response so far: the text the next step continues."""
        return build_prompt(self.problem.question) + "".join(self.steps)


@dataclasses.dataclass(frozen=True)
class FinishRequest:
    """Continue `partial` (a final code step plus its `<output>` block) up to `<end_of_answer>`."""

    problem: Any
    steps: tuple[str, ...]
    partial: str
    seed: int

    @property
    def prompt(self) -> str:
        return build_prompt(self.problem.question) + "".join(self.steps) + self.partial

    @property
    def code_prompt(self) -> str:
        """The prompt up to the final step's `<end_of_code>`, before the output: the text that was sampled."""
        cut = self.partial.find(END_OF_CODE)
        return build_prompt(self.problem.question) + "".join(self.steps) + (
            self.partial[: cut + len(END_OF_CODE)] if cut >= 0 else self.partial)


@dataclasses.dataclass
class PolicyCounters:
    """Work a policy did: generate calls, sequences, prompt tokens prefilled, tokens decoded, and
    prompts whose keys/values came from the prefix cache instead of a prefill."""

    calls: int = 0
    sequences: int = 0
    prefill_tokens: int = 0
    decoded_tokens: int = 0
    cached_prompts: int = 0


class StepPolicy(Protocol):
    """What the search needs from a policy. Results must depend only on each request (not on the batch)."""

    counters: PolicyCounters

    def propose(self, requests: Sequence[StepRequest]) -> list[list[str]]:
        """For each request, up to `n` candidate steps, each ending with a stop string when parsable."""

    def finish(self, requests: Sequence[FinishRequest]) -> list[str]:
        """For each request, the text that follows `partial` (normally `<answer>...<end_of_answer>`)."""


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from any printable parts (stable across processes, unlike hash())."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


_OUTPUT = re.compile(re.escape(OUTPUT_START) + r"(.*?)" + re.escape(END_OF_OUTPUT), re.DOTALL)


def box_last_output(partial: str) -> str:
    """Answer text that boxes the last non-empty line the program printed (a scripted final answer)."""
    found = _OUTPUT.findall(partial)
    lines = [ln.strip() for ln in (found[-1] if found else "").splitlines() if ln.strip()]
    value = lines[-1] if lines else ""
    return f"{ANSWER_START}The answer is \\boxed{{{value}}}{END_OF_ANSWER}"


StepFn = Callable[[Any, tuple[str, ...], int, np.random.Generator], list[str]]
FinishFn = Callable[[Any, tuple[str, ...], str, np.random.Generator], str]


class ScriptedPolicy:
    """Candidates from a program: `step_fn(problem, steps, n, rng) -> list[str]`.

    Deterministic for a seed: every request gets its own numpy Generator seeded from the request,
    so a tree's candidates do not depend on which other trees share the batch. `finish_fn` writes
    the answer after a final code step; by default it boxes the last printed line.
    """

    def __init__(self, step_fn: StepFn, finish_fn: FinishFn | None = None):
        self.step_fn = step_fn
        self.finish_fn = finish_fn or (lambda problem, steps, partial, rng: box_last_output(partial))
        self.counters = PolicyCounters()

    def propose(self, requests: Sequence[StepRequest]) -> list[list[str]]:
        self.counters.calls += 1
        out = []
        for r in requests:
            cands = list(self.step_fn(r.problem, r.steps, r.n, np.random.default_rng(r.seed)))[: r.n]
            self.counters.sequences += len(cands)
            out.append(cands)
        return out

    def finish(self, requests: Sequence[FinishRequest]) -> list[str]:
        self.counters.calls += 1
        self.counters.sequences += len(requests)
        return [self.finish_fn(r.problem, r.steps, r.partial, np.random.default_rng(r.seed)) for r in requests]

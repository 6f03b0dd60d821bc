"""The demo's toy world: multi-step arithmetic word problems and a scripted, systematically noisy teacher.

A problem is a start quantity and 1 to 6 operations (add, subtract, multiply, exact divide), each
told in one of several phrasings; difficulty (`level`) is the number of operations, answers are
integers and every true intermediate value is a positive integer below `MAX_VALUE`.

The teacher writes solutions in the step format of rstar_jax.steps, one step per operation, whose
comment quotes the operation's sentence: a 2-layer model copies operands far more reliably from the
line above than by counting sentences in the question (operand errors 19% -> 8% of steps). Its
mistakes are per phrasing: `Phrasing.p_wrong` is the chance of writing the phrasing's systematic
wrong operator (`noise` scales it). One phrasing per operation is wrong more often than right, so a
model trained on the teacher inherits those mistakes under greedy decoding (about 30% held-out
accuracy, see `majority_accuracy`) while sampling still finds the right line at every level. A
wrong line may drive the value to zero, negative or a floored quotient; the program still runs and
prints an integer, and the printed value is always what the written program really computes.
"""
from __future__ import annotations

import ast
import dataclasses
import functools
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from rstar_jax.data.problems import Problem
from rstar_jax.io import InputError
from rstar_jax.steps import (ANSWER_START, CODE_START, END_OF_ANSWER, END_OF_CODE, END_OF_STEP, build_prompt,
                             format_output, program)

LEVELS = (1, 2, 3, 4, 5, 6)
MAX_VALUE = 999
SYMBOLS = {"add": "+", "sub": "-", "mul": "*", "div": "//"}
NAMES = {"Mia": "she", "Leo": "he", "Ava": "she", "Sam": "he", "Zoe": "she", "Max": "he", "Lily": "she", "Ben": "he"}
OBJECTS = ("marbles", "apples", "stickers", "coins", "cards", "shells", "pens", "books")
VARIABLE = "x"  # the teacher's one variable: a tiny model need not learn to copy the object's name into code


@dataclasses.dataclass(frozen=True)
class Phrasing:
    """One way to say an operation: the question sentence (also the step's comment) and the teacher's mistake."""

    text: str  # the sentence after its subject pronoun; {n} is the operand
    wrong: str  # the operator the teacher writes by mistake
    p_wrong: float  # how often it does so at noise 1


# Per operation, its phrasings; index = phrasing id. The first of each is majority-wrong, by a small
# margin at noise 1: greedy decoding inherits the mistake, while sampling writes the right line almost
# half the time, so a search from the base finds it and a few hundred verified solutions can flip it.
# The demo runs at noise 1.45 (13-20% right), where each round's search finds more of them.
PHRASINGS: dict[str, tuple[Phrasing, ...]] = {
    "add": (
        Phrasing("gets {n} from a friend", "-", 0.55),
        Phrasing("finds {n} more", "-", 0.1),
        Phrasing("buys {n} more", "-", 0.0),
    ),
    "sub": (
        Phrasing("gives away {n}", "+", 0.55),
        Phrasing("loses {n}", "+", 0.1),
        Phrasing("sells {n}", "+", 0.0),
    ),
    "mul": (
        Phrasing("gets {n} times as many", "+", 0.6),
        Phrasing("trades each one for {n}", "+", 0.15),
        Phrasing("multiplies them by {n}", "+", 0.0),
    ),
    "div": (
        Phrasing("shares them equally among {n} friends", "-", 0.55),
        Phrasing("keeps 1 of every {n}", "-", 0.1),
        Phrasing("keeps 1/{n} of them", "-", 0.0),
    ),
}


@dataclasses.dataclass(frozen=True)
class Operation:
    """One operation of a toy problem: which, told how (phrasing id), with what operand."""

    op: str
    phrasing: int
    operand: int

    @property
    def phrase(self) -> Phrasing:
        return PHRASINGS[self.op][self.phrasing]


@dataclasses.dataclass(frozen=True)
class ToyProblem(Problem):
    """A Problem that keeps the structure it was written from, so the teacher can solve it."""

    name: str
    obj: str
    start: int
    ops: tuple[Operation, ...]

    @classmethod
    def build(cls, id: str, name: str, obj: str, start: int, ops: Sequence[Operation]) -> "ToyProblem":
        """Renders the question and computes the answer of a structured problem."""
        ops = tuple(ops)
        return cls(id=id, question=_question(name, obj, start, ops), answer=str(_true_value(start, ops)),
                   level=len(ops), source="toyworld", name=name, obj=obj, start=start, ops=ops)

    def to_problem(self) -> Problem:
        """The plain Problem (what is saved to jsonl)."""
        return Problem(self.id, self.question, self.answer, self.level, self.source)


def generate_problems(n: int, seed: int, levels: Sequence[int] = LEVELS) -> list[ToyProblem]:
    """`n` distinct problems, levels cycling through `levels`; the same seed gives the same list."""
    return _generate(np.random.default_rng(seed), n, levels, f"toy{seed}", set())


def splits(seed: int, n_train: int = 2000, n_pool: int = 400, n_heldout: int = 200,
           levels: Sequence[int] = LEVELS, n_pool_extra: int = 0) -> dict[str, list[ToyProblem]]:
    """Train (teacher corpus), pool (searched each round) and held-out (evaluation) sets, disjoint by question.

    Every split cycles through all levels. They are drawn held-out, pool, train, then `n_pool_extra`
    more pool problems: held-out stays the same when the other sizes change, and the extra pool
    problems leave train (the pretrained base's corpus) as it was.
    """
    rng, seen = np.random.default_rng(seed), set()
    sizes = {"heldout": n_heldout, "pool": n_pool, "train": n_train}
    out = {split: _generate(rng, size, levels, f"{split}{seed}", seen) for split, size in sizes.items()}
    extra = _generate(rng, n_pool_extra, levels, f"pool{seed}x", seen)
    return {"train": out["train"], "pool": out["pool"] + extra, "heldout": out["heldout"]}


def teacher_next_steps(problem: Problem, steps_so_far: Sequence[str], n: int, rng: np.random.Generator,
                       noise: float = 1.0) -> list[str]:
    """`n` sampled candidates for the next step after `steps_so_far` (a ScriptedPolicy step function).

    The step after the last operation is the final step: print, `<end_of_code>`, the output of the
    path's program and the boxed answer. A plain Problem is parsed back into its structure.
    """
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    toy = as_toy(problem)
    k = len(steps_so_far)
    var = VARIABLE
    if k == 0:
        return [f"{CODE_START}\n# Step 1: start\n{var} = {toy.start}\n{END_OF_STEP}"] * n
    if k <= toy.level:
        return [_op_step(toy.ops[k - 1], k + 1, var, rng, noise) for _ in range(n)]
    if k == toy.level + 1:
        value = evaluate(program(list(steps_so_far))).get(var)
        if value is None:
            raise ValueError(f"problem {toy.id!r}: the path never assigns {var!r}")
        return [f"\n# Now print the final answer\nprint({var})\n{END_OF_CODE}" + format_output(f"{value}\n")
                + f"{ANSWER_START}The answer is \\boxed{{{value}}}{END_OF_ANSWER}"] * n
    raise ValueError(f"problem {toy.id!r}: a path of {k} steps is already complete ({toy.level} operations)")


def teacher_solution(problem: Problem, rng: np.random.Generator, noise: float = 1.0) -> str:
    """A full response by the noisy teacher: one sample of every step in turn."""
    steps: list[str] = []
    for _ in range(as_toy(problem).level + 2):
        steps.extend(teacher_next_steps(problem, steps, 1, rng, noise))
    return "".join(steps)


def tokenizer_corpus(problems: Iterable[Problem], rng: np.random.Generator, noise: float = 1.0) -> Iterator[str]:
    """Prompt plus teacher solution for each problem: the text the demo tokenizer is trained on."""
    for p in problems:
        yield build_prompt(p.question) + teacher_solution(p, rng, noise)


def majority_accuracy(problems: Iterable[Problem], noise: float = 1.0) -> float:
    """Fraction of problems solved by always writing each phrasing's more likely line (greedy's ceiling)."""
    results = []
    for p in problems:
        toy = as_toy(p)
        value = toy.start
        for o in toy.ops:
            symbol = o.phrase.wrong if noise * o.phrase.p_wrong > 0.5 else SYMBOLS[o.op]
            value = _apply(symbol, value, o.operand)
        results.append(str(value) == toy.answer)
    return float(np.mean(results)) if results else 0.0


def evaluate(code: str) -> dict[str, int]:
    """Runs a program of integer assignments (`x = 12`, `x = x // 3`) without exec; returns the variables.

    This is the only code the teacher writes (print lines are skipped); anything else is a ValueError.
    """
    try:
        body = ast.parse(code).body
    except SyntaxError as e:
        raise ValueError(f"not a teacher program: {e.msg} on line {e.lineno}") from None
    env: dict[str, int] = {}
    for stmt in body:
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
            continue
        if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)):
            raise ValueError(f"not a teacher statement: {ast.unparse(stmt)!r}")
        env[stmt.targets[0].id] = _eval_expr(stmt.value, env)
    return env


def as_toy(problem: Problem) -> ToyProblem:
    """The structured form of a toy-world problem (a ToyProblem as is, a plain Problem parsed from its question)."""
    if isinstance(problem, ToyProblem):
        return problem
    toy = parse_question(problem.question, problem.id)
    if toy.answer != problem.answer:
        raise InputError(f"problem {problem.id!r}: answer {problem.answer!r} does not match its question ({toy.answer})")
    return toy


@functools.lru_cache(maxsize=8192)
def parse_question(question: str, id: str = "") -> ToyProblem:
    """Inverts the question template: the structure a toy-world question was written from."""
    sentences = [s.strip() for s in question.replace("?", ".").split(".") if s.strip()]
    if len(sentences) < 3:
        raise InputError(f"problem {id!r}: not a toy-world question: {question!r}")
    head, ops_text = sentences[0].split(" "), sentences[1:-1]
    if len(head) != 4 or head[1] != "has" or not head[2].isdigit() or head[0] not in NAMES or head[3] not in OBJECTS:
        raise InputError(f"problem {id!r}: cannot read the start {sentences[0]!r}")
    name, start, obj = head[0], int(head[2]), head[3]
    ops = tuple(_parse_operation(s, name, id) for s in ops_text)
    toy = ToyProblem.build(id, name, obj, start, ops)
    if toy.question != question:
        raise InputError(f"problem {id!r}: not a toy-world question: {question!r}")
    return toy


# ----- internals -----

def _generate(rng: np.random.Generator, n: int, levels: Sequence[int], prefix: str, seen: set[str]) -> list[ToyProblem]:
    if not levels or min(levels) < 1:
        raise ValueError(f"levels must be positive operation counts, got {levels!r}")
    out: list[ToyProblem] = []
    while len(out) < n:
        problem = _sample(rng, levels[len(out) % len(levels)], f"{prefix}-{len(out):05d}")
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    return out


def _sample(rng: np.random.Generator, level: int, id: str) -> ToyProblem:
    name = list(NAMES)[rng.integers(len(NAMES))]
    obj = OBJECTS[rng.integers(len(OBJECTS))]
    start = int(rng.integers(2, 41))
    value, ops = start, []
    for _ in range(level):
        choices = {op: _operands(op, value) for op in SYMBOLS}
        feasible = [op for op, operands in choices.items() if operands]
        op = feasible[rng.integers(len(feasible))]
        operand = int(rng.choice(choices[op]))
        ops.append(Operation(op, int(rng.integers(len(PHRASINGS[op]))), operand))
        value = _apply(SYMBOLS[op], value, operand)
    return ToyProblem.build(id, name, obj, start, ops)


def _operands(op: str, value: int) -> list[int]:
    """Operands that keep the true value a positive integer below MAX_VALUE."""
    if op == "add":
        return list(range(1, min(20, MAX_VALUE - value) + 1))
    if op == "sub":
        return list(range(1, min(20, value - 1) + 1))
    if op == "mul":
        return list(range(2, min(5, MAX_VALUE // value) + 1))
    return [d for d in range(2, 7) if value % d == 0]


def _apply(symbol: str, value: int, operand: int) -> int:
    return {"+": value + operand, "-": value - operand, "*": value * operand, "//": value // operand}[symbol]


def _true_value(start: int, ops: Sequence[Operation]) -> int:
    value = start
    for o in ops:
        value = _apply(SYMBOLS[o.op], value, o.operand)
    return value


def _question(name: str, obj: str, start: int, ops: Sequence[Operation]) -> str:
    pronoun = NAMES[name]
    sentences = [f"{name} has {start} {obj}."]
    for i, o in enumerate(ops):
        sentences.append(f"{pronoun.capitalize()} {o.phrase.text.format(n=o.operand)}.")
    sentences.append(f"How many {obj} does {name} have now?")
    return " ".join(sentences)


def _parse_operation(sentence: str, name: str, id: str) -> Operation:
    body = sentence.split(" ")[1:]
    for op, phrasings in PHRASINGS.items():
        for index, phrasing in enumerate(phrasings):
            pattern = phrasing.text.split(" ")
            if len(pattern) != len(body):
                continue
            numbers = [w.removeprefix("1/") for w, p in zip(body, pattern) if "{n}" in p]
            fixed = all(w == p for w, p in zip(body, pattern) if "{n}" not in p)
            if fixed and len(numbers) == 1 and numbers[0].isdigit():
                return Operation(op, index, int(numbers[0]))
    raise InputError(f"problem {id!r}: cannot read the operation {sentence!r}")


def _op_step(o: Operation, number: int, var: str, rng: np.random.Generator, noise: float) -> str:
    symbol = o.phrase.wrong if rng.random() < noise * o.phrase.p_wrong else SYMBOLS[o.op]
    return f"\n# Step {number}: {o.phrase.text.format(n=o.operand)}\n{var} = {var} {symbol} {o.operand}\n{END_OF_STEP}"


def _eval_expr(node: ast.expr, env: dict[str, int]) -> int:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.Name) and node.id in env:
        return env[node.id]
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return _BINOPS[type(node.op)](_eval_expr(node.left, env), _eval_expr(node.right, env))
    raise ValueError(f"not an integer expression of known variables: {ast.unparse(node)!r}")


_BINOPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
           ast.FloorDiv: lambda a, b: a // b}

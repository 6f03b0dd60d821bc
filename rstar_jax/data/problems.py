"""Problem sources: one `Problem` record read from MATH-, GSM8K- or our own-shaped jsonl.

Accepted fields per line: the text in `problem` or `question`; the ground truth in `answer` (a
GSM8K worked solution ending in `#### 18` gives "18") or else the last `\\boxed{}` of `solution`
(MATH); `level` as 3 or "Level 3"; the id in `id`, `unique_id` or `idx`, else `<file stem>-<line>`;
`source` (else the file stem). `save_problems` writes our own shape, which `load_problems` reads back.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable
from typing import Any

from etils import epath

from rstar_jax.grading import last_boxed
from rstar_jax.io import InputError, read_jsonl, write_jsonl

_ID_FIELDS = ("id", "unique_id", "idx")
_LEVEL = re.compile(r"\s*(?:level\s*)?(\d+|\?)\s*", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class Problem:
    """One problem: its text, the ground-truth final answer as a string, difficulty if known, origin."""

    id: str
    question: str
    answer: str
    level: int | None
    source: str


def load_problems(path: str | os.PathLike) -> list[Problem]:
    """Reads a jsonl of problems (MATH, GSM8K or our own shape); bad lines raise InputError naming file, line, field."""
    path = epath.Path(path)
    stem = path.name.split(".")[0]
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        problem = _parse(obj, where, default_id=f"{stem}-{lineno}", default_source=stem)
        if problem.id in first_line:
            raise InputError(f"{where}: duplicate id {problem.id!r} (first seen on line {first_line[problem.id]})")
        first_line[problem.id] = lineno
        problems.append(problem)
    return problems


def save_problems(path: str | os.PathLike, problems: Iterable[Problem]) -> int:
    """Writes problems atomically in our own jsonl shape; returns how many were written."""
    fields = [f.name for f in dataclasses.fields(Problem)]
    return write_jsonl(path, ({name: getattr(p, name) for name in fields} for p in problems))


def _parse(obj: dict[str, Any], where: str, default_id: str, default_source: str) -> Problem:
    return Problem(
        id=_id(obj, where, default_id),
        question=_text(obj, where),
        answer=_answer(obj, where),
        level=_level(obj, where),
        source=_optional_str(obj, "source", where) or default_source,
    )


def _text(obj: dict[str, Any], where: str) -> str:
    field = next((f for f in ("problem", "question") if f in obj), None)
    if field is None:
        raise InputError(f"{where}: missing field 'problem' (or 'question')")
    value = obj[field]
    if not isinstance(value, str):
        raise InputError(f"{where}: field '{field}' must be str, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: field '{field}' is empty")
    return value


def _answer(obj: dict[str, Any], where: str) -> str:
    value = obj.get("answer")
    if isinstance(value, bool) or (value is not None and not isinstance(value, str | int | float)):
        raise InputError(f"{where}: field 'answer' must be str or number, got {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if value is not None and value.strip():
        if "####" not in value:
            return value.strip()
        final = value.rsplit("####", 1)[1].strip().replace(",", "")
        if not final:
            raise InputError(f"{where}: field 'answer' has nothing after '####'")
        return final
    if "solution" not in obj:
        raise InputError(f"{where}: missing field 'answer' (or 'solution' with a \\boxed{{}} answer)")
    solution = obj["solution"]
    if not isinstance(solution, str):
        raise InputError(f"{where}: field 'solution' must be str, got {type(solution).__name__}")
    boxed = last_boxed(solution)
    if not boxed:
        raise InputError(f"{where}: field 'solution' has no \\boxed{{}} answer (and 'answer' is missing or empty)")
    return boxed


def _level(obj: dict[str, Any], where: str) -> int | None:
    value = obj.get("level")
    if value is None or isinstance(value, int) and not isinstance(value, bool):
        return value
    match = _LEVEL.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise InputError(f"{where}: field 'level' must be an int or like 'Level 3', got {value!r}")
    return None if match.group(1) == "?" else int(match.group(1))  # MATH marks a few problems "Level ?"


def _id(obj: dict[str, Any], where: str, default: str) -> str:
    field = next((f for f in _ID_FIELDS if f in obj), None)
    if field is None:
        return default
    value = obj[field]
    if isinstance(value, bool) or not isinstance(value, str | int) or not str(value).strip():
        raise InputError(f"{where}: field '{field}' must be a non-empty str or int, got {value!r}")
    return str(value)


def _optional_str(obj: dict[str, Any], field: str, where: str) -> str | None:
    value = obj.get(field)
    if value is not None and not isinstance(value, str):
        raise InputError(f"{where}: field '{field}' must be str, got {type(value).__name__}")
    return value

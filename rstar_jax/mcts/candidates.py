"""Filtering an expansion's sampled candidates: dedupe (by text or by normalised code) and one final step.

About half of the candidates a small policy samples are exact duplicates, and many more differ
only in comments or spacing; every kept duplicate costs an execution, a node and later rollouts.
"""
from __future__ import annotations

import io
import tokenize

from rstar_jax.steps import END_OF_ANSWER, step_code, stop_kind

DEDUPE_MODES = ("none", "text", "code")


def normalize_code(step: str) -> str:
    """The step's Python with comments, blank lines and spacing removed (its behaviour, roughly).

    Steps that do not tokenize (a syntax error, an unfinished string) fall back to their stripped lines.
    """
    code = step_code(step)
    try:
        toks = [t.string for t in tokenize.generate_tokens(io.StringIO(code + "\n").readline)
                if t.type not in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT,
                                  tokenize.DEDENT, tokenize.ENDMARKER)]
        body = " ".join(toks)
    except (tokenize.TokenError, IndentationError, SyntaxError):
        body = "\n".join(ln.strip() for ln in code.splitlines() if ln.strip())
    # A final step that already carries its answer keeps the answer text in the key.
    tail = step[step.rfind("<answer>"):] if step.rstrip().endswith(END_OF_ANSWER) else ""
    return f"{stop_kind(step)}\x00{body}\x00{tail}"


def dedupe_key(step: str, mode: str) -> str | None:
    """What two candidates must share to count as duplicates under `mode` (None: never)."""
    if mode == "none":
        return None
    if mode == "text":
        return step
    if mode == "code":
        return normalize_code(step)
    raise ValueError(f"mcts.dedupe must be one of {DEDUPE_MODES}, got {mode!r}")


def filter_candidates(cands: list[str], dedupe: str, one_final: bool) -> tuple[list[str], int]:
    """Keeps candidates in order, dropping duplicates and, with `one_final`, every final step after the first.

    A final step is one that stops at `<end_of_code>` or `<end_of_answer>`. Returns (kept, duplicates).
    """
    seen: set[str] = set()
    kept, dups, have_final = [], 0, False
    for c in cands:
        key = dedupe_key(c, dedupe)
        if key is not None and key in seen:
            dups += 1
            continue
        final = stop_kind(c) in ("code", "answer")
        if one_final and final and have_final:
            continue
        if key is not None:
            seen.add(key)
        have_final |= final
        kept.append(c)
    return kept, dups

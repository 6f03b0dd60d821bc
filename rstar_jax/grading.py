"""Answer extraction and equivalence for MATH- and GSM8K-style answers.

`extract_answer` pulls the final answer out of a solution; `is_equiv` decides whether a predicted
answer means the same as the gold one. Comparison runs in three layers, cheapest first:

1. Normalisation (`normalize`): the MATH conventions — `\\dfrac`/`\\tfrac` become `\\frac`, `\\text{}`
   wrappers, `$`, `\\left`/`\\right`, spacing macros, degrees, `%`, trailing units and a leading
   `x =` or `x \\in` go away, valid thousands separators are dropped, whitespace is removed.
   A dropped `%` leaves the written number (`50\\%` equals `50`, not `0.5`).
2. An exact fast path in this process: equal strings, plain numbers compared as `Fraction`s
   (`0.5` == `1/2` == `\\frac12`, `27` != `27.5`), multiple-choice letters, and the shape of
   tuples, intervals and sets. The common integer answer never touches sympy.
3. Anything the fast path cannot settle goes to math-verify in a helper process with a hard
   deadline: symbolic comparison can hang on hostile input (`9^{9^{9^{9}}}`), and math-verify's own
   signal-based time limit only works in the main thread, whereas the search grades from workers.

Structure rules: `(a,b)` and `[a,b)` are ordered (tuples, intervals; bracket kinds must match);
`\\{a,b\\}` and bare comma lists `a, b` are unordered (MATH lists several solutions that way), and a
one-element set equals its element. Multiple-choice letters (`B`, `(B)`, `B)`, `\\text{(B)}`) only
ever equal the same letter; words (`\\text{even}`) compare as case-insensitive strings.
"""
from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

# ----------------------------------------------------------------------------------------------
# Extraction


_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
# Zero-width (lookahead) matches, so that a later phrase on the same line is found too.
_ANSWER_PHRASE = re.compile(r"(?=\banswer\s*(?:is\s*:?|:)\s*(?P<x>[^\n<]*))", re.IGNORECASE)
_GSM8K = re.compile(r"(?=####\s*(?P<x>[^\n<]*))")


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`/`\\fbox{...}` whose braces close; None if there is none."""
    for match in reversed(list(_BOX.finditer(text))):
        depth = 1
        for i in range(match.end(), len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                return text[match.end():i].strip()
    return None


def _clean_phrase(answer: str) -> str:
    """Trims a phrase-captured answer: surrounding space and `$`, and a sentence-ending period."""
    return answer.strip().rstrip(".").strip().strip("$").strip()


def _last_capture(pattern: re.Pattern[str], text: str) -> str | None:
    """The cleaned capture of the last match of `pattern` that is not empty."""
    for match in reversed(list(pattern.finditer(text))):
        answer = _clean_phrase(match.group("x"))
        if answer:
            return answer
    return None


def extract_answer(text: str) -> str | None:
    """The final answer of a solution text, or None when it states none.

    In order: the content of the last `\\boxed{...}` or `\\fbox{...}` (nested braces kept; an empty
    box counts as no answer); else the last "The answer is X" / "answer: X" phrase, up to the end
    of its line or the next `<` tag, without `$` and a final period; else GSM8K's last `#### X`.
    """
    if _BOX.search(text):
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed or None
    return _last_capture(_ANSWER_PHRASE, text) or _last_capture(_GSM8K, text)


# ----------------------------------------------------------------------------------------------
# Normalisation

# One unit word: any word of three letters or more, or a known short unit; `^2`/`^3` allowed.
_UNIT = r"(?:[A-Za-z]{3,}|cm|mm|km|m|in|ft|mi|s|h|g|kg|lb|oz|ml)(?:\^\{?[23]\}?)?"
_TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|textnormal|mbox|mathrm|mathbf|operatorname)\s*\{([^{}]*)\}")
# After a number, trailing words are units: any inside `\text{...}`; bare ones when each is a unit
# word (`18 marbles`, `5 cm^2`; but `2 x` is a product).
_TRAILING_TEXT_UNIT = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm|textnormal)\s*\{\s*[A-Za-z][A-Za-z\s.]*(?:\^\{?[23]\}?)?\s*\}\s*$")
_TRAILING_UNIT = re.compile(r"(?<=[\d}])(?:\s+" + _UNIT + r")+\.?\s*$")
_DEGREES = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|\^\s*\{?\s*\\degree\s*\}?|\\degree|°")
_SPACING = re.compile(r"(?<!\\)\\[!,;: ]|\\q?quad\b|~")
_LEFT_RIGHT = re.compile(r"\\(?:left|right|big|Big|bigg|Bigg)(?![a-zA-Z])")
_PREFIX = re.compile(r"^(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?[a-zA-Z0-9]+\}?)?\s*(?:=|\\in(?![a-zA-Z]))\s*")
_FRAC_SHORT = re.compile(r"\\frac\s*(\d)\s*(\d)")
_FRAC_HALF_SHORT = re.compile(r"\\frac\s*(\{[^{}]*\})\s*(\d)|\\frac\s*(\d)\s*(\{[^{}]*\})")
_SQRT_SHORT = re.compile(r"\\sqrt\s*(\d)")
_BLANK = re.compile(r"(\\[a-zA-Z]+)?\s+(?=([a-zA-Z])?)")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def _outer_close(s: str, start: int) -> int:
    """Index of the bracket closing the one opened at `start` (any of `([{` against `)]}`), or -1."""
    depth = 0
    for i in range(start, len(s)):
        if s[i] in "([{":
            depth += 1
        elif s[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(s: str) -> list[str]:
    """Splits `s` at commas outside every bracket."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    parts.append(s[start:])
    return parts


def _fix_short_macros(s: str) -> str:
    """Gives `\\frac12`, `\\frac{a}2`, `\\frac1{b}` and `\\sqrt2` their braces."""
    s = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", s)
    s = _FRAC_HALF_SHORT.sub(lambda m: f"\\frac{m[1]}{{{m[2]}}}" if m[1] else f"\\frac{{{m[3]}}}{m[4]}", s)
    return _SQRT_SHORT.sub(r"\\sqrt{\1}", s)


def _squeeze(s: str) -> str:
    """Removes whitespace, keeping one space where it ends a command before a letter (`\\pi r`)."""
    return _BLANK.sub(lambda m: (m[1] or "") + (" " if m[1] and m[2] else ""), s)


def normalize(answer: str) -> str:
    """The MATH-style canonical form of an answer string (see the module docstring); idempotent."""
    s = answer.strip()
    s = s.replace("\\displaystyle", "").replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\$", "").replace("$", "").replace("{,}", ",")
    s = _LEFT_RIGHT.sub("", s)
    s = _SPACING.sub(" ", s)
    s = _DEGREES.sub("", s)
    s = s.replace("\\%", "").replace("%", "")
    s = _TRAILING_TEXT_UNIT.sub("", s)
    s = _TEXT_MACRO.sub(r"\1", s)
    s = _TRAILING_UNIT.sub("", s).strip()
    if s.endswith("."):
        s = s[:-1]
    if (m := _PREFIX.match(s)) and "=" not in s[m.end():]:
        s = s[m.end():]
    s = _fix_short_macros(_squeeze(s))
    if _THOUSANDS.fullmatch(s):
        s = s.replace(",", "")
    while s.startswith("(") and _outer_close(s, 0) == len(s) - 1 and len(_split_top(s[1:-1])) == 1:
        s = s[1:-1]
    return s


# ----------------------------------------------------------------------------------------------
# Fast, exact comparison

_DECIMAL = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)")
_SLASH = re.compile(r"([-+]?)(\d+)/(\d+)")
_FRAC = re.compile(r"([-+]?)\\frac\{([-+]?)(\d+)\}\{(\d+)\}")
_CHOICE = re.compile(r"\(?([A-J])[).]?")
_WORD = re.compile(r"[A-Za-z]{3,}")
_MAX_DIGITS = 400


def _number(s: str) -> Fraction | None:
    """`s` as an exact rational when it is a plain decimal, `a/b` or `\\frac{a}{b}`; else None."""
    if len(s) > _MAX_DIGITS:
        return None
    if _DECIMAL.fullmatch(s):
        return Fraction(s)
    if m := _SLASH.fullmatch(s):
        sign, num, den = m.groups()
    elif m := _FRAC.fullmatch(s):
        sign, inner_sign, num, den = m.groups()
        sign = "-" if (sign == "-") != (inner_sign == "-") else ""
    else:
        return None
    if int(den) == 0:
        return None
    return Fraction(int(num), int(den)) * (-1 if sign == "-" else 1)


def _choice(s: str) -> str | None:
    """The letter of a multiple-choice answer written `B`, `(B)`, `B)` or `B.`; else None."""
    m = _CHOICE.fullmatch(s)
    return m[1] if m else None


def _fast_leaf(pred: str, gold: str) -> bool | None:
    """Exact verdict on two normalised atoms when both are plain numbers or one is a word; else None.

    Words (three letters or more, e.g. `\\text{even}`) compare case-insensitively: as sympy
    products of letters `east` would equal `ates`.
    """
    if _WORD.fullmatch(pred) or _WORD.fullmatch(gold):
        return pred.lower() == gold.lower()
    p, g = _number(pred), _number(gold)
    return None if p is None or g is None else p == g


def _structure(s: str) -> tuple[str, list[str]] | None:
    """The kind and items of a tuple/interval (`"(]"` etc.), set or bare list (`"set"`); None for an atom."""
    if s.startswith("\\{") and s.endswith("\\}") and _outer_close(s, 1) == len(s) - 1:
        return "set", [normalize(x) for x in _split_top(s[2:-2])]
    if s[:1] in "([" and s[-1:] in ")]" and _outer_close(s, 0) == len(s) - 1:
        items = _split_top(s[1:-1])
        if len(items) > 1:
            return s[0] + s[-1], [normalize(x) for x in items]
    items = _split_top(s)
    return ("set", [normalize(x) for x in items]) if len(items) > 1 else None


Leaf = Callable[[str, str], "bool | None"]


def _compare_ordered(preds: list[str], golds: list[str], leaf: Leaf) -> bool | None:
    """Item-by-item comparison; None when nothing is False but some item was undecided."""
    undecided = False
    for p, g in zip(preds, golds):
        verdict = _compare(p, g, leaf)
        if verdict is False:
            return False
        undecided |= verdict is None
    return None if undecided else True


def _compare_unordered(preds: list[str], golds: list[str], leaf: Leaf) -> bool | None:
    """Matches every predicted item to a distinct gold item (equivalence is transitive, so greedy suffices)."""
    unused, undecided = list(golds), False
    for p in preds:
        for i, g in enumerate(unused):
            verdict = _compare(p, g, leaf)
            undecided |= verdict is None
            if verdict:
                del unused[i]
                break
        else:
            return None if undecided else False
    return True


def _compare(pred: str, gold: str, leaf: Leaf) -> bool | None:
    """Compares two normalised answers, deferring atoms the rules cannot settle to `leaf`."""
    if pred == gold:
        return True
    if pred == "" or gold == "":
        return False
    p_choice, g_choice = _choice(pred), _choice(gold)
    if p_choice or g_choice:
        return p_choice == g_choice
    p_struct, g_struct = _structure(pred), _structure(gold)
    if p_struct is None and g_struct is None:
        return leaf(pred, gold)
    p_kind, p_items = p_struct or ("set", [pred])
    g_kind, g_items = g_struct or ("set", [gold])
    if p_kind != g_kind or len(p_items) != len(g_items):
        return False
    if p_kind == "set":
        return _compare_unordered(p_items, g_items, leaf)
    return _compare_ordered(p_items, g_items, leaf)


# ----------------------------------------------------------------------------------------------
# Symbolic comparison in a helper process

MAX_ANSWER_CHARS = 2000
_ROOT = str(Path(__file__).resolve().parents[1])
_STARTUP_S = 120.0


def _symbolic_leaf(pred: str, gold: str) -> bool:
    """math-verify's verdict on two atoms (numbers stay exact); run only inside the helper process."""
    fast = _fast_leaf(pred, gold)
    if fast is not None:
        return fast
    from math_verify import parse, verify

    try:
        g = parse(f"${gold}$", parsing_timeout=None)
        p = parse(f"${pred}$", parsing_timeout=None)
        return bool(g and p and verify(g, p, timeout_seconds=None))
    except Exception:  # math-verify raises on malformed input: an unparseable answer is not equal
        return False


def _serve() -> None:
    """Helper-process loop: reads one JSON `[pred, gold]` per line, answers `1` or `0` per line."""
    import logging

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints from the libraries must not corrupt the protocol
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    _symbolic_leaf("x+1", "1+x")  # warm the lazy imports before reporting ready
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        pred, gold = json.loads(line)
        out.write("1\n" if _compare(pred, gold, _symbolic_leaf) else "0\n")
        out.flush()


class _Helper:
    """One helper process; `ask` returns None when it missed the deadline or died (it is then killed)."""

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from rstar_jax.grading import _serve; _serve()"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=_ROOT, env=env,
        )
        self.buffer = b""
        if self._read_line(time.monotonic() + _STARTUP_S) != "ready":
            self.kill()
            raise RuntimeError("grading helper process failed to start")

    def _read_line(self, deadline: float) -> str | None:
        """The helper's next output line, or None if it has not come by `deadline` or the pipe closed."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 4096)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()

    def ask(self, pred: str, gold: str, timeout: float) -> bool | None:
        """The helper's verdict on two normalised answers; None (and the helper killed) past `timeout`."""
        try:
            self.proc.stdin.write((json.dumps([pred, gold]) + "\n").encode())
            self.proc.stdin.flush()
        except OSError:
            self.kill()
            return None
        reply = self._read_line(time.monotonic() + timeout)
        if reply is None:
            self.kill()
            return None
        return reply == "1"

    def kill(self) -> None:
        """Ends the helper, whatever it is doing, and reaps it."""
        self.proc.kill()
        self.proc.wait()


_idle: list[_Helper] = []
_idle_lock = threading.Lock()


def _forget_helpers() -> None:
    """In a forked child: the parent's helpers share their pipes with the parent, so start afresh."""
    global _idle, _idle_lock
    _idle, _idle_lock = [], threading.Lock()


os.register_at_fork(after_in_child=_forget_helpers)


def _symbolic(pred: str, gold: str, timeout: float) -> bool:
    """Runs the symbolic comparison on an idle helper (started on demand, one per concurrent caller)."""
    with _idle_lock:
        helper = _idle.pop() if _idle else None
    helper = helper or _Helper()
    verdict = helper.ask(pred, gold, timeout)
    if verdict is None:
        return False
    with _idle_lock:
        _idle.append(helper)
    return verdict


def is_equiv(pred: str | None, gold: str | None, timeout: float = 5.0) -> bool:
    """Whether answer `pred` means the same as `gold` (see the module docstring for the rules).

    Deterministic and safe to call from any thread; symbolic checks that take longer than
    `timeout` seconds count as not equal. A missing or empty answer, or one longer than
    `MAX_ANSWER_CHARS` (no real answer is; it bounds the string work), is never equal.
    """
    if not pred or not gold or max(len(pred), len(gold)) > MAX_ANSWER_CHARS:
        return False
    p, g = normalize(pred), normalize(gold)
    fast = _compare(p, g, _fast_leaf)
    if fast is not None:
        return fast
    return _symbolic(p, g, timeout)

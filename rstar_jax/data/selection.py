"""Data selection: verified search trees -> SFT examples for the policy and step-level pairs for the PPM.

The rules are the reference's (DESIGN.md, "Policy data" and "PPM data"); the output files use the
reference's jsonl fields, so its released datasets load with the same readers:
SFT `{"query", "response"}` (query = the bare question; `build_prompt` is applied at tokenization) and
PPM `{"prompt", "pos", "neg", "pos_count", "neg_count"}` (prompt = `build_prompt(question)` followed by
the shared prefix steps; pos/neg = the one step where the two continuations differ).

Choices where the reference is loose, made on purpose:
- A node "has a wrong descendant" when its subtree holds an answer graded wrong or a dead terminal
  (code error, depth, unparsable): all of them received -1 in the search.
- A child with both correct and wrong descendants may serve either side, but never both in one node.
- `pos_count`/`neg_count` count the distinct positives/negatives among the pairs kept at that node, so
  the loss weight 1/(pos_count*neg_count) makes each node's full grid of pairs weigh 1 in total.
- Final-answer pairs (the paper's relaxed rule for the last step, `ppm_final_per_side`): the children of
  a node that ends in an answer rarely differ, so step pairs almost never reach the answer step, yet the
  answer step's score is what inference ranks terminals by. Per tree, the correct trajectories with the
  highest mean step Q are paired with the wrong-answer trajectories with the lowest; prompt = the bare
  question prompt, pos/neg = the whole responses. They skip the step filters (whole solutions that end
  in different answers are the point), weigh 1 per tree like one node's grid, and leave out a pair
  that a node already made.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable

import numpy as np

from rstar_jax.io import InputError, read_jsonl, require_field, write_jsonl
from rstar_jax.mcts.records import TreeRecord, read_trees
from rstar_jax.steps import build_prompt


@dataclasses.dataclass(frozen=True)
class SFTExample:
    """One policy training example: the bare question and a full verified response."""

    query: str
    response: str

    def to_json(self) -> dict:
        return {"query": self.query, "response": self.response}


@dataclasses.dataclass(frozen=True)
class PPMPair:
    """One preference pair: two steps continuing the same prompt; weight 1/(pos_count*neg_count)."""

    prompt: str
    pos: str
    neg: str
    pos_count: int = 1
    neg_count: int = 1

    @property
    def weight(self) -> float:
        return 1.0 / (self.pos_count * self.neg_count)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class SelectionConfig:
    """Knobs of the two selections; defaults are the reference's."""

    sft_per_problem: int = 2
    ppm_per_side: int = 2  # positives (highest Q) and negatives (lowest Q) taken per node
    ppm_other_side: int = 4  # taken from the other side when one side has a single candidate
    ppm_min_q_margin: float = 0.5
    ppm_min_edit_distance: int = 20
    ppm_final_per_side: int = 2  # whole correct / wrong trajectories paired per tree; 0 = step pairs only


# ----------------------------------------------------------------------------------------------
# SFT examples


def _has_error(tree: TreeRecord, node_id: int) -> bool:
    node = tree.nodes[node_id]
    return node.error is not None or node.dead_reason == "error"


def select_sft(tree: TreeRecord, cfg: SelectionConfig = SelectionConfig()) -> list[SFTExample]:
    """The top correct root-to-leaf paths of one tree, ranked by (mean step Q, min step Q), error-free only."""
    clean = [leaf for leaf in _answers(tree, correct=True)
             if not any(_has_error(tree, i) for i in tree.path(leaf))]
    best = _rank_by_path_q(tree, clean)[: cfg.sft_per_problem]
    return [SFTExample(tree.question, tree.response(leaf)) for leaf in best]


def _answers(tree: TreeRecord, *, correct: bool) -> list[int]:
    """Ids of the answer terminals graded `correct` (True) or wrong (False)."""
    return [n.id for n in tree.nodes[1:] if n.terminal == "answer" and n.correct is correct]


def _rank_by_path_q(tree: TreeRecord, leaves: list[int], *, worst_first: bool = False) -> list[int]:
    """Leaves by their paths' (mean step Q, min step Q), best (or worst) first; ties go to the earlier leaf."""
    sign = 1.0 if worst_first else -1.0

    def key(leaf: int) -> tuple[float, float, int]:
        qs = [tree.nodes[i].q for i in tree.path(leaf)]
        return (sign * sum(qs) / len(qs), sign * min(qs), leaf)
    return sorted(leaves, key=key)


# ----------------------------------------------------------------------------------------------
# PPM pairs


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two strings (unit costs), one numpy row update per character of `a`.

    The insertion term of a row is a running minimum: d[j] = min_k(t[k] + j - k) = j + cummin(t - k).
    """
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    bcodes = np.frombuffer(b.encode("utf-32-le"), dtype=np.uint32)
    idx = np.arange(len(b) + 1)
    prev = idx.copy()
    for i, ch in enumerate(a, start=1):
        sub = prev[:-1] + (bcodes != ord(ch))
        t = np.empty_like(prev)
        t[0] = i
        t[1:] = np.minimum(sub, prev[1:] + 1)
        prev = idx + np.minimum.accumulate(t - idx)
    return int(prev[-1])


def far_apart(a: str, b: str, k: int) -> bool:
    """edit_distance(a, b) >= k, skipping the DP when the length gap alone settles it."""
    return abs(len(a) - len(b)) >= k or edit_distance(a, b) >= k


def _outcomes(tree: TreeRecord, kids: list[list[int]]) -> tuple[list[bool], list[bool]]:
    """For every node: does its subtree (itself included) hold a correct answer / a wrong or dead end."""
    good = [False] * len(tree.nodes)
    bad = [False] * len(tree.nodes)
    for node in reversed(tree.nodes):  # parents precede children, so reverse order is bottom-up
        good[node.id] = node.terminal == "answer" and node.correct is True
        bad[node.id] = node.terminal == "dead" or (node.terminal == "answer" and node.correct is False)
        for c in kids[node.id]:
            good[node.id] |= good[c]
            bad[node.id] |= bad[c]
    return good, bad


def _pick_sides(tree: TreeRecord, children: list[int], good: list[bool], bad: list[bool],
                cfg: SelectionConfig) -> tuple[list[int], list[int]]:
    """Positives (highest Q with a correct descendant) and negatives (lowest Q with a wrong one) of one node."""
    q = lambda i: tree.nodes[i].q  # noqa: E731
    pos_c = sorted((c for c in children if good[c]), key=lambda i: (-q(i), i))
    neg_c = sorted((c for c in children if bad[c]), key=lambda i: (q(i), i))
    n_pos = n_neg = cfg.ppm_per_side
    if len(pos_c) == 1:
        n_neg = cfg.ppm_other_side
    if len(neg_c) == 1:
        n_pos = cfg.ppm_other_side
    pos = pos_c[:n_pos]
    neg = [c for c in neg_c if c not in pos][:n_neg]
    return pos, neg


def select_ppm(tree: TreeRecord, cfg: SelectionConfig = SelectionConfig()) -> list[PPMPair]:
    """All preference pairs of one tree: at every node, positives x negatives among its children, filtered."""
    kids = tree.children()
    good, bad = _outcomes(tree, kids)
    prompt_head = build_prompt(tree.question)
    pairs: list[PPMPair] = []
    for node in tree.nodes:
        if len(kids[node.id]) < 2:
            continue
        pos, neg = _pick_sides(tree, kids[node.id], good, bad, cfg)
        kept = [
            (p, n) for p in pos for n in neg
            if tree.nodes[p].q - tree.nodes[n].q >= cfg.ppm_min_q_margin
            and far_apart(tree.nodes[p].text, tree.nodes[n].text, cfg.ppm_min_edit_distance)
        ]
        if not kept:
            continue
        n_pos = len({p for p, _ in kept})
        n_neg = len({n for _, n in kept})
        prompt = prompt_head + tree.response(node.id)
        pairs.extend(PPMPair(prompt, tree.nodes[p].text, tree.nodes[n].text, n_pos, n_neg) for p, n in kept)
    known = {(p.prompt + p.pos, p.prompt + p.neg) for p in pairs}
    return pairs + _final_pairs(tree, cfg, known)


def _final_pairs(tree: TreeRecord, cfg: SelectionConfig, known: set[tuple[str, str]]) -> list[PPMPair]:
    """Whole-trajectory pairs: top correct (highest mean step Q) x bottom wrong-answer (lowest mean step Q).

    A pair already made at a node (two answers that share all earlier steps) is not made twice; `known`
    holds the full prompt+pos / prompt+neg texts of the step pairs."""
    k = cfg.ppm_final_per_side
    pos = _rank_by_path_q(tree, _answers(tree, correct=True))[:k]
    neg = _rank_by_path_q(tree, _answers(tree, correct=False), worst_first=True)[:k]
    prompt = build_prompt(tree.question)
    text = {leaf: tree.response(leaf) for leaf in pos + neg}
    kept = [(p, n) for p in pos for n in neg if (prompt + text[p], prompt + text[n]) not in known]
    n_pos = len({p for p, _ in kept})
    n_neg = len({n for _, n in kept})
    return [PPMPair(prompt, text[p], text[n], n_pos, n_neg) for p, n in kept]


def select_all(trees: Iterable[TreeRecord], cfg: SelectionConfig = SelectionConfig()
               ) -> tuple[list[SFTExample], list[PPMPair]]:
    """SFT examples and PPM pairs of many trees, in tree order."""
    sft: list[SFTExample] = []
    ppm: list[PPMPair] = []
    for tree in trees:
        sft.extend(select_sft(tree, cfg))
        ppm.extend(select_ppm(tree, cfg))
    return sft, ppm


# ----------------------------------------------------------------------------------------------
# jsonl files


def write_sft(path: str | os.PathLike, examples: Iterable[SFTExample]) -> int:
    """Writes SFT examples as `{"query", "response"}` jsonl, atomically; returns the count."""
    return write_jsonl(path, (e.to_json() for e in examples))


def write_ppm(path: str | os.PathLike, pairs: Iterable[PPMPair]) -> int:
    """Writes PPM pairs as `{"prompt", "pos", "neg", "pos_count", "neg_count"}` jsonl, atomically."""
    return write_jsonl(path, (p.to_json() for p in pairs))


def read_sft(path: str | os.PathLike) -> list[SFTExample]:
    """Reads SFT jsonl; a line missing `query`/`response` or holding a non-string raises InputError."""
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        out.append(SFTExample(require_field(obj, "query", str, where), require_field(obj, "response", str, where)))
    return out


def read_ppm(path: str | os.PathLike) -> list[PPMPair]:
    """Reads PPM jsonl; counts default to 1 when absent and must be positive integers when present."""
    out = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        counts = []
        for field in ("pos_count", "neg_count"):
            value = obj.get(field, 1)
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{where}: field '{field}' must be a positive integer, got {value!r}")
            counts.append(value)
        out.append(PPMPair(require_field(obj, "prompt", str, where), require_field(obj, "pos", str, where),
                           require_field(obj, "neg", str, where), *counts))
    return out


def select_to_files(tree_paths: Iterable[str | os.PathLike], sft_path: str | os.PathLike,
                    ppm_path: str | os.PathLike, cfg: SelectionConfig = SelectionConfig()) -> tuple[int, int]:
    """Reads tree jsonl shards, selects from every tree and writes both datasets; returns their sizes."""
    trees = [t for path in tree_paths for t in read_trees(path)]
    sft, ppm = select_all(trees, cfg)
    return write_sft(sft_path, sft), write_ppm(ppm_path, ppm)

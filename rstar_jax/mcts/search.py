"""Lockstep MCTS host driver: B trees advance together, one batched call per stage per iteration.

Each iteration: `select` (device) finds one node to expand in every live tree; all of them are
expanded with ONE `policy.propose` call; every candidate's program (with its ancestors' code) runs in
ONE sandbox batch; final code steps are continued to their answer in ONE `policy.finish` call; new
nodes are scored in ONE PPM call where needed; `expand_and_backup` (device) writes everything back.
A tree that has used its rollouts hands its slot to the next problem of the stream (continuous
batching). Seeds derive from (seed, problem id, attempt, expansion index), so a tree is the same
whether it runs alone or among 63 others.

With `mcts.pipeline_groups` > 1 the lanes form groups that take turns: an expansion is started
(decode, programs sent) and completed (results read, answers, PPM, backup) on the group's next turn,
so one group's programs run in the sandbox while the next group decodes. That only pays where the
two do not share cores (the sandbox on the host CPU, decoding on an accelerator); on this 2-core CPU
box it is about neutral (benchmarks/bench_mcts.py). The trees are the same for any grouping.

With `mcts.exec_cache` (off unless the config sets it) a search runs each distinct program text once
(whichever tree asks, alone or in lockstep, finished or still running) and shares its result.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Callable, Protocol

import numpy as np
from tqdm import tqdm

from rstar_jax.io import InputError
from rstar_jax.mcts import tree as T
from rstar_jax.mcts.candidates import filter_candidates
from rstar_jax.mcts.policy import FinishRequest, StepPolicy, StepRequest, derive_seed
from rstar_jax.mcts.records import NodeRecord, TreeRecord
from rstar_jax.steps import build_prompt, format_output, program, stop_kind


class StepScorer(Protocol):
    """The PPM as the search uses it: a step score in [-1, 1] (tanh(r/5)) for each prompt+response text."""

    def score(self, texts: Sequence[str], prefixes: Sequence[str | None] | None = None) -> np.ndarray:
        """`prefixes[i]` is the text `texts[i]` extends (its parent's, scored before), for scorers that cache."""


class Executor(Protocol):
    """The sandbox as the search uses it (rstar_jax.sandbox.Sandbox): `submit_many(codes).result()`
    gives ExecResults (stdout, error, timed_out) in order, without blocking at submission."""

    def submit_many(self, codes: Sequence[str]) -> Any: ...


def grade_answer(text: str, gold: str | None) -> tuple[str | None, bool | None]:
    """(extracted answer, correctness against gold or None without gold)."""
    from rstar_jax.grading import extract_answer, is_equiv

    answer = extract_answer(text)
    if answer is None or gold is None:
        return answer, None
    return answer, bool(is_equiv(answer, gold))


@dataclasses.dataclass
class SearchStats:
    """Per-run counters and where the wall time went (seconds)."""

    problems: int = 0
    solved: int = 0
    rollouts: int = 0
    expansions: int = 0
    nodes: int = 0
    candidates: int = 0  # sampled
    duplicates: int = 0  # dropped by dedupe
    programs: int = 0  # executed
    programs_cached: int = 0  # not executed: the same program text already ran in this search (exec_cache)
    ppm_scored: int = 0
    tokens_decoded: int = 0
    tokens_prefilled: int = 0
    prompts_cached: int = 0  # expansions whose path came from the policy's prefix cache (not prefilled)
    iterations: int = 0
    time_decode: float = 0.0
    time_execute: float = 0.0
    time_ppm: float = 0.0
    time_tree: float = 0.0
    time_host: float = 0.0
    time_total: float = 0.0

    def add(self, other: "SearchStats") -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class _Node:
    """Host-side part of a node: everything that is text or needs the sandbox or the grader."""

    text: str
    parent: int
    depth: int
    errors: int = 0  # consecutive erroring steps ending here
    terminal: str | None = None
    dead_reason: str | None = None
    answer: str | None = None
    correct: bool | None = None
    error: str | None = None
    output: str = ""
    ppm_score: float | None = None


@dataclasses.dataclass
class _Slot:
    """One lane of the lockstep batch: the problem it holds and its host-side nodes."""

    problem: Any
    attempt: int
    budget: int  # rollouts allowed for this attempt
    tree_seed: int
    nodes: list[_Node]
    started: int = 0
    expansions: int = 0
    rollouts_before: int = 0  # rollouts of earlier attempts (round-4 rule)

    def path_texts(self, node: int) -> tuple[str, ...]:
        out = []
        while node > 0:
            out.append(self.nodes[node].text)
            node = self.nodes[node].parent
        return tuple(reversed(out))


@dataclasses.dataclass
class _Child:
    """A candidate being turned into a node during one iteration."""

    slot: int
    index: int  # position among the expansion's kept candidates (seeds the answer continuation)
    text: str
    kind: str | None
    node: _Node


def check_problem(problem: Any, where: str) -> None:
    """Raises InputError unless `problem` has id, question and answer attributes of usable types."""
    for attr in ("id", "question", "answer"):
        if not hasattr(problem, attr):
            raise InputError(f"{where}: problem has no '{attr}'")
    if not isinstance(problem.question, str) or not problem.question.strip():
        raise InputError(f"{where}: problem {problem.id!r} has an empty or non-text 'question'")
    if problem.answer is not None and not isinstance(problem.answer, str):
        raise InputError(f"{where}: problem {problem.id!r} field 'answer' must be text or None")


def _width(cfg, depth: int) -> int:
    widths = list(cfg.width_by_depth)
    return int(widths[min(depth, len(widths) - 1)]) if widths else int(cfg.num_children)


def _max_width(cfg) -> int:
    return max(int(w) for w in cfg.width_by_depth) if cfg.width_by_depth else int(cfg.num_children)


class LockstepSearch:
    """Runs MCTS over a stream of problems with `batch` trees in lockstep; see the module docstring."""

    def __init__(self, policy: StepPolicy, cfg, *, sandbox: Executor, ppm: StepScorer | None = None,
                 seed: int = 0, batch: int | None = None):
        if cfg.q_init not in ("terminal", "ppm"):
            raise ValueError(f"mcts.q_init must be 'terminal' or 'ppm', got {cfg.q_init!r}")
        if cfg.q_init == "ppm" and ppm is None:
            raise ValueError("mcts.q_init='ppm' needs a PPM scorer")
        self.policy, self.cfg, self.sandbox, self.ppm, self.seed = policy, cfg, sandbox, ppm, seed
        self.batch = int(batch or cfg.batch_trees)
        self.width = _max_width(cfg)
        # mcts.exec_cache (default off when the config lacks it): run each distinct program text once
        # per search (`run`), whichever tree asks, alone or in lockstep. A step without new code repeats
        # its parent's program; steps such as `import math` repeat across trees. Programs are assumed
        # deterministic (an unseeded random draw is reused, not redrawn).
        self.exec_cache = bool(cfg.get("exec_cache", False))
        self._exec_results: dict[str, Any] = {}
        self.stats = SearchStats()

    # ----- the stream -----

    def run(self, problems: Iterable[Any], on_tree: Callable[[TreeRecord], None],
            total: int | None = None) -> SearchStats:
        """Searches every problem once; `on_tree` receives each finished tree (in finishing order)."""
        t_start = time.perf_counter()
        B, W = self.batch, self.width
        self._exec_results = {}
        stream: Iterator[Any] = iter(problems)
        seen: set[str] = set()
        tree = T.init_tree(B, int(self.cfg.max_nodes), W)
        slots: list[_Slot | None] = [None] * B
        bar = tqdm(total=total, desc="mcts", unit="problem", dynamic_ncols=True, mininterval=2.0)
        self._counted = dataclasses.replace(self.policy.counters)

        def next_problem() -> Any | None:
            p = next(stream, None)
            if p is not None:
                where = f"problem #{len(seen) + 1}"
                check_problem(p, where)
                if str(p.id) in seen:
                    raise InputError(f"{where}: duplicate problem id {p.id!r}")
                seen.add(str(p.id))
            return p

        def fill(i: int, problem: Any, attempt: int, rollouts_before: int = 0) -> None:
            budget = int(self.cfg.rollouts) if attempt == 0 else int(self.cfg.extra_rollouts[attempt - 1])
            slots[i] = _Slot(problem, attempt, budget, derive_seed(self.seed, problem.id, attempt),
                             [_Node("", -1, 0)], rollouts_before=rollouts_before)

        def advance(tree: T.Tree, group: np.ndarray) -> tuple[T.Tree, np.ndarray]:
            """Selects a leaf in every live tree of `group` [B]; a tree out of rollouts is recorded (or
            retried, round-4 rule) and its slot takes the next problem, which selects at once."""
            t0 = time.perf_counter()
            live = group & np.array([s is not None for s in slots])
            tree, leaf, started, done = self._select(tree, slots, live)
            t1 = time.perf_counter()
            self.stats.time_tree += t1 - t0
            done = np.asarray(done)
            if done.any():
                refill = np.zeros(B, bool)
                host_tree = _host_rows(tree, np.flatnonzero(done))
                for i in np.flatnonzero(done):
                    s = slots[i]
                    solved = any(n.correct for n in s.nodes)
                    if not solved and s.problem.answer is not None and s.attempt < len(self.cfg.extra_rollouts):
                        fill(i, s.problem, s.attempt + 1, s.rollouts_before + s.started)
                        refill[i] = True
                        continue
                    self.stats.problems += 1
                    self.stats.solved += int(solved)
                    self.stats.rollouts += s.rollouts_before + s.started
                    self.stats.nodes += len(s.nodes)
                    on_tree(self._record(s, host_tree[i]))
                    bar.update(1)
                    bar.set_postfix(solved=self.stats.solved, rollouts=self.stats.rollouts, refresh=False)
                    p = next_problem()
                    slots[i] = None
                    if p is not None:
                        fill(i, p, 0)
                        refill[i] = True
                t2 = time.perf_counter()
                self.stats.time_host += t2 - t1
                if refill.any():
                    tree = T.reset(tree, refill)
                    tree, leaf2, started2, _ = self._select(tree, slots, refill)
                    leaf = np.where(refill, np.asarray(leaf2), np.asarray(leaf))
                    started = np.where(refill, np.asarray(started2), np.asarray(started))
                self.stats.time_tree += time.perf_counter() - t2
            leaf, started = np.asarray(leaf), np.asarray(started)
            for i in np.flatnonzero(started):
                slots[i].started += 1
            return tree, leaf

        for i in range(B):
            p = next_problem()
            if p is None:
                break
            fill(i, p, 0)
        # Pipelining (mcts.pipeline_groups): the lanes split into groups that take turns, so one
        # group's programs run in the sandbox while the next group decodes. Each tree sees the same
        # sequence of select / expand / backup either way, so the trees do not depend on the split.
        groups = _lane_groups(B, int(self.cfg.get("pipeline_groups", 1)))
        pending: list[_Pending | None] = [None] * len(groups)
        while any(s is not None for s in slots) or any(p is not None for p in pending):
            for g, group in enumerate(groups):
                if pending[g] is not None:
                    tree = self._complete(tree, slots, pending[g])
                    pending[g] = None
                if not any(slots[i] is not None for i in np.flatnonzero(group)):
                    continue
                tree, leaf = advance(tree, group)
                if (leaf >= 0).any():
                    pending[g] = self._start(slots, leaf)
            self.stats.iterations += 1
        bar.close()
        c = self.policy.counters
        self.stats.tokens_decoded += c.decoded_tokens - self._counted.decoded_tokens
        self.stats.tokens_prefilled += c.prefill_tokens - self._counted.prefill_tokens
        self.stats.prompts_cached += c.cached_prompts - self._counted.cached_prompts
        self.stats.time_total += time.perf_counter() - t_start
        return self.stats

    def _select(self, tree, slots, active):
        keys = np.zeros((self.batch, 2), np.uint32)
        can_start = np.zeros(self.batch, bool)
        for i, s in enumerate(slots):
            if s is not None:
                k = derive_seed(s.tree_seed, "select", s.expansions)
                keys[i] = (k & 0xFFFFFFFF, (k >> 32) & 0xFFFFFFFF)
                can_start[i] = s.started < s.budget
        return T.select(tree, keys, can_start, np.asarray(active), c=float(self.cfg.c_puct),
                        unvisited_score=float(self.cfg.unvisited_score), random_ties=bool(self.cfg.random_ties))

    # ----- one expansion of every selected leaf: started (decode, submit programs), then completed -----

    def _start(self, slots: list[_Slot | None], leaf: np.ndarray) -> "_Pending":
        """Samples the candidates of every selected leaf in ONE policy call and sends all their programs
        (each with its ancestors' code) to the sandbox in one batch, without waiting for them."""
        cfg = self.cfg
        t0 = time.perf_counter()
        lanes = [int(i) for i in np.flatnonzero(leaf >= 0)]
        paths = {i: slots[i].path_texts(int(leaf[i])) for i in lanes}
        requests = [StepRequest(slots[i].problem, paths[i], _width(cfg, slots[i].nodes[leaf[i]].depth),
                                derive_seed(slots[i].tree_seed, "expand", slots[i].expansions)) for i in lanes]
        t1 = time.perf_counter()
        proposals = self.policy.propose(requests)
        t2 = time.perf_counter()
        self.stats.time_decode += t2 - t1

        # Filter and classify; every program of the expansion goes to the sandbox at once. Final code
        # steps are queued first: their outputs are needed to decode the answers, which then overlaps
        # with the execution of all other steps.
        children: list[_Child] = []
        for i, cands in zip(lanes, proposals):
            s, parent = slots[i], slots[i].nodes[leaf[i]]
            kept, dups = filter_candidates(cands, cfg.dedupe, bool(cfg.one_final_per_expansion))
            self.stats.candidates += len(cands)
            self.stats.duplicates += dups
            s.expansions += 1
            self.stats.expansions += 1
            for k, text in enumerate(kept):
                child = _Child(i, k, text, stop_kind(text), _Node(text, int(leaf[i]), parent.depth + 1))
                if child.kind is None:
                    child.node.terminal, child.node.dead_reason = "dead", "unparsable"
                children.append(child)
        finals = [ch for ch in children if ch.kind == "code"]
        others = [ch for ch in children if ch.kind in ("step", "answer")]
        run_final = self._submit([program(list(paths[ch.slot]) + [ch.text]) for ch in finals])
        run_other = self._submit([program(list(paths[ch.slot]) + [ch.text]) for ch in others])
        self.stats.time_host += (t1 - t0) + (time.perf_counter() - t2)
        return _Pending(leaf, paths, children, finals, others, run_final, run_other)

    def _complete(self, tree: T.Tree, slots: list[_Slot | None], job: "_Pending") -> T.Tree:
        """Applies a started expansion's execution results, continues verified final steps to their
        answers (ONE policy call), grades, scores new nodes with the PPM (ONE call) and writes the new
        children and their rewards into the tree arrays (ONE device call)."""
        cfg, B, W = self.cfg, self.batch, self.width
        leaf, paths, children = job.leaf, job.paths, job.children
        t3 = time.perf_counter()
        final_results = job.run_final.result()
        t4 = time.perf_counter()
        self.stats.time_execute += t4 - t3
        to_finish = [ch for ch, res in zip(job.finals, final_results) if self._verified(ch, res, slots)]
        if to_finish:
            reqs = []
            for ch in to_finish:
                s = slots[ch.slot]
                ch.node.text = ch.text + format_output(ch.node.output, ch.node.error)
                reqs.append(FinishRequest(s.problem, paths[ch.slot], ch.node.text,
                                          derive_seed(s.tree_seed, "finish", s.expansions, ch.index)))
            t5 = time.perf_counter()
            self.stats.time_host += t5 - t4
            tails = self.policy.finish(reqs)
            t4 = time.perf_counter()
            self.stats.time_decode += t4 - t5
            for ch, tail in zip(to_finish, tails):
                ch.node.text += tail
                if stop_kind(ch.node.text) == "answer":
                    ch.node.terminal = "answer"
                else:
                    ch.node.terminal, ch.node.dead_reason = "dead", "unparsable"
        other_results = job.run_other.result()
        t5 = time.perf_counter()
        self.stats.time_execute += t5 - t4
        for ch, res in zip(job.others, other_results):
            self._verified(ch, res, slots)
        for ch in children:
            if ch.node.terminal == "answer":
                ch.node.answer, ch.node.correct = grade_answer(ch.node.text, slots[ch.slot].problem.answer)
                if ch.node.answer is None:
                    ch.node.terminal, ch.node.dead_reason = "dead", "unparsable"
        t8 = time.perf_counter()
        self.stats.time_host += t8 - t5

        # PPM: new inner nodes in PPM-augmented rounds; answers of problems without ground truth.
        scored = [ch for ch in children if (ch.node.terminal is None and cfg.q_init == "ppm")
                  or (ch.node.terminal == "answer" and slots[ch.slot].problem.answer is None)]
        if scored:
            if self.ppm is None:
                raise ValueError("problems without ground truth need a PPM to score their answers")
            parents = [build_prompt(slots[ch.slot].problem.question) + "".join(paths[ch.slot]) for ch in scored]
            texts = [parent + ch.node.text for parent, ch in zip(parents, scored)]
            for ch, v in zip(scored, np.asarray(self.ppm.score(texts, parents), np.float64)):
                ch.node.ppm_score = float(v)
            self.stats.ppm_scored += len(scored)
        t9 = time.perf_counter()
        self.stats.time_ppm += t9 - t8

        # Arrays for the device update.
        count = np.zeros(B, np.int32)
        kind = np.zeros((B, W), np.int32)
        visits = np.zeros((B, W), np.int32)
        value = np.zeros((B, W), np.float32)
        reward = np.zeros((B, W), np.float32)
        ppm = np.full((B, W), np.nan, np.float32)
        backup_value = np.zeros(B, np.float32)
        backup_count = np.zeros(B, np.int32)
        pos, neg = float(cfg.positive_reward), float(cfg.negative_reward)
        for ch in children:
            i, n = ch.slot, ch.node
            j = count[i]
            count[i] += 1
            slots[i].nodes.append(n)
            if n.ppm_score is not None:
                ppm[i, j] = n.ppm_score
            if n.terminal == "dead":
                kind[i, j], visits[i, j], value[i, j], reward[i, j] = T.DEAD, 1, neg, neg
            elif n.terminal == "answer":
                r = n.ppm_score if n.correct is None else (pos if n.correct else neg)
                kind[i, j], visits[i, j], value[i, j], reward[i, j] = T.ANSWER, 1, r, r
                backup_value[i] += r
                backup_count[i] += 1
            elif cfg.q_init == "ppm":
                visits[i, j], value[i, j] = 1, n.ppm_score
        need = max(len(s.nodes) for s in slots if s is not None)
        if need > tree.shape[1]:
            size = tree.shape[1]
            while size < need:
                size *= 2
            tree = T.grow(tree, size)
        t10 = time.perf_counter()
        self.stats.time_host += t10 - t9
        tree = T.expand_and_backup(tree, leaf.astype(np.int32), count, kind, visits,
                                   value, reward, ppm, backup_value, backup_count)
        jax_block(tree)
        self.stats.time_tree += time.perf_counter() - t10
        return tree

    def _submit(self, codes: list[str]) -> "_Results":
        """Sends programs to the sandbox in one batch. With `mcts.exec_cache`, a program whose exact
        text this search already sent (finished or still running) is not sent again: its result is
        shared; identical programs within the batch run once."""
        batch = _Batch()
        if not self.exec_cache:
            self.stats.programs += len(codes)
            batch.handle = self.sandbox.submit_many(codes)
            return _Results([(batch, k) for k in range(len(codes))])
        unique: list[str] = []
        where: list[tuple[_Batch, int]] = []
        for code in codes:
            if code not in self._exec_results:
                self._exec_results[code] = (batch, len(unique))
                unique.append(code)
            where.append(self._exec_results[code])
        self.stats.programs += len(unique)
        self.stats.programs_cached += len(codes) - len(unique)
        batch.handle = self.sandbox.submit_many(unique)
        return _Results(where)

    def _verified(self, ch: _Child, res: Any, slots: list[_Slot | None]) -> bool:
        """Applies a step's execution result (errors, depth); True when it is a final code step to finish."""
        cfg, node = self.cfg, ch.node
        node.output, node.error = res.stdout, res.error
        node.errors = slots[ch.slot].nodes[node.parent].errors + 1 if res.error else 0
        if node.errors >= int(cfg.errors_threshold):
            node.terminal, node.dead_reason = "dead", "error"
        elif ch.kind == "code":
            return True
        elif ch.kind == "answer":
            node.terminal = "answer"
        elif node.depth > int(cfg.max_depth):
            node.terminal, node.dead_reason = "dead", "depth"
        return False

    def _record(self, s: _Slot, arrays: dict[str, np.ndarray]) -> TreeRecord:
        """The finished tree as a TreeRecord (device values joined with host text)."""
        visits, value_sum = arrays["visits"], arrays["value_sum"]
        nodes = []
        for k, n in enumerate(s.nodes):
            v, vs = int(visits[k]), float(value_sum[k])
            nodes.append(NodeRecord(
                id=k, parent=n.parent, text=n.text, depth=n.depth, visits=v, value_sum=vs,
                q=vs / v if v else 0.0, ppm_score=n.ppm_score, terminal=n.terminal, dead_reason=n.dead_reason,
                answer=n.answer, correct=n.correct, error=n.error, output=n.output))
        stats = {"rollouts": s.rollouts_before + s.started, "expansions": s.expansions, "attempt": s.attempt,
                 "seed": s.tree_seed, "solved": any(n.correct for n in s.nodes)}
        return TreeRecord(str(s.problem.id), s.problem.question, s.problem.answer, nodes, stats)


class _Batch:
    """One sandbox batch; its results are fetched once, by whichever expansion needs them first."""

    def __init__(self):
        self.handle: Any = None
        self._out: list[Any] | None = None

    def get(self, k: int) -> Any:
        if self._out is None:
            self._out = self.handle.result()
        return self._out[k]


class _Results:
    """The results one expansion asked for, in order: entries are (batch, position) pairs, so a
    program shared through the execution cache is read from the batch that ran it."""

    def __init__(self, where: list[tuple[_Batch, int]]):
        self.where = where

    def result(self) -> list[Any]:
        return [batch.get(k) for batch, k in self.where]


@dataclasses.dataclass
class _Pending:
    """An expansion between `_start` and `_complete`: its leaves [B] (-1 elsewhere), paths, new
    children and their programs, which are running in the sandbox."""

    leaf: np.ndarray
    paths: dict[int, tuple[str, ...]]
    children: list[_Child]
    finals: list[_Child]
    others: list[_Child]
    run_final: _Results
    run_other: _Results


def _lane_groups(batch: int, groups: int) -> list[np.ndarray]:
    """`groups` (at most one per lane) masks [batch] of contiguous lanes that take turns in the pipeline."""
    if groups < 1:
        raise ValueError(f"mcts.pipeline_groups must be >= 1, got {groups}")
    bounds = np.linspace(0, batch, min(groups, batch) + 1).round().astype(int)
    lanes = np.arange(batch)
    return [(lanes >= lo) & (lanes < hi) for lo, hi in zip(bounds[:-1], bounds[1:])]


def jax_block(tree: T.Tree) -> None:
    """Waits for the device update, so tree time is measured where it is spent."""
    tree.num_nodes.block_until_ready()


def _host_rows(tree: T.Tree, rows: np.ndarray) -> dict[int, dict[str, np.ndarray]]:
    visits, value_sum = np.asarray(tree.visits), np.asarray(tree.value_sum)
    return {int(i): {"visits": visits[i], "value_sum": value_sum[i]} for i in rows}

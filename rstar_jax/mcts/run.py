"""Entry points the round loop and evaluation call: `search` (training data) and `solve` (inference).

`search` writes this process's trees shard resumably (see output.py); `solve` runs several
independent searches per problem without showing the ground truth, scores terminals with the PPM,
and picks each problem's answer by a majority vote over the top-K runs by PPM score.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

from rstar_jax.mcts.output import TreeShardWriter
from rstar_jax.mcts.policy import StepPolicy
from rstar_jax.mcts.records import TreeRecord
from rstar_jax.mcts.search import Executor, LockstepSearch, SearchStats, StepScorer

log = logging.getLogger(__name__)


def _process() -> tuple[int, int]:
    import jax

    return jax.process_index(), jax.process_count()


def search(problems: Iterable[Any], policy: StepPolicy, cfg, *, sandbox: Executor, ppm: StepScorer | None = None,
           seed: int = 0, out_dir, process_index: int | None = None, process_count: int | None = None,
           batch: int | None = None) -> SearchStats:
    """Searches this process's share of `problems` (every process_count-th, from process_index) and
    writes `out_dir/trees-IIIII-of-NNNNN.jsonl`. Rerun after an interruption, it skips the problems
    already flushed; after completion it returns the stored statistics and does nothing.

    Statistics resumed from flushed trees cover problems, solved, rollouts and nodes; timings and
    token counts cover the work done by this call only.
    """
    if process_index is None or process_count is None:
        process_index, process_count = _process()
    writer = TreeShardWriter(out_dir, process_index, process_count, cfg.flush_every)
    if writer.finished:
        writer.cleanup()
        log.info("mcts: %s already complete", writer.path)
        return SearchStats(**{k: v for k, v in writer.read_stats().items() if k in SearchStats.__dataclass_fields__})
    prior = SearchStats()
    done: set[str] = set()
    for t in writer.resumed_trees():
        done.add(t.problem_id)
        prior.problems += 1
        prior.solved += int(any(n.correct for n in t.nodes))
        prior.rollouts += int(t.stats.get("rollouts", 0))
        prior.nodes += len(t.nodes)
    if done:
        log.info("mcts: resuming %s with %d trees already flushed", writer.path, len(done))
    mine = [p for i, p in enumerate(problems) if i % process_count == process_index and str(p.id) not in done]
    engine = LockstepSearch(policy, cfg, sandbox=sandbox, ppm=ppm, seed=seed, batch=batch)
    stats = engine.run(mine, writer.add, total=len(mine))
    stats.add(prior)
    writer.finish(stats.as_dict())
    log.info("mcts: %s: %d problems, %d solved, %d rollouts, %.1fs", writer.path, stats.problems, stats.solved,
             stats.rollouts, stats.time_total)
    return stats


@dataclasses.dataclass(frozen=True)
class _Run:
    """One independent search of a problem in inference: the gold answer is withheld."""

    id: str
    question: str
    answer: None
    problem: Any
    run: int


TERMINAL_SCORES = ("last", "min", "prod")


def check_terminal_score(how: str) -> str:
    """`how` when it names a way to score answer terminals (`mcts.terminal_score`), else a ValueError."""
    if how not in TERMINAL_SCORES:
        raise ValueError(f"mcts.terminal_score={how!r}: expected one of {TERMINAL_SCORES}")
    return how


def path_score(scores: Sequence[float | None], how: str) -> float:
    """One score for a path from the PPM step scores along it (root to answer; unscored steps, None, are
    skipped): the answer step's own ("last", the reference), the lowest ("min": a path is as good as its
    weakest step), or the log of the product of (1 + s) / 2 ("prod": each step's score read as the
    chance it is right; for a log-prob PPM, the product of its steps' per-token probabilities)."""
    got = [float(s) for s in scores if s is not None]
    if how == "last":
        return got[-1]
    if how == "min":
        return min(got)
    return sum(math.log((1.0 + s) / 2.0) if s > -1.0 else -math.inf for s in got)


def best_terminal(tree: TreeRecord, how: str = "last") -> tuple[str, float] | None:
    """(answer, score) of the tree's best-scored answer terminal by `path_score`, or None."""
    check_terminal_score(how)
    scored = []
    for n in tree.nodes:
        if n.terminal != "answer" or n.answer is None or n.ppm_score is None:
            continue
        scored.append((path_score([tree.nodes[i].ppm_score for i in tree.path(n.id)], how), n.answer))
    if not scored:
        return None
    score, answer = max(scored, key=lambda s: s[0])
    return answer, float(score)


def vote(candidates: Sequence[tuple[str, float]], top_k: int) -> tuple[str | None, int, float]:
    """Majority vote over the top-K (answer, score) pairs by score; equivalent answers pool their votes.

    Ties in votes go to the larger summed score. Returns (answer, votes, summed score).
    """
    from rstar_jax.grading import is_equiv

    top = sorted(candidates, key=lambda c: -c[1])[: max(1, top_k)]
    groups: list[list[tuple[str, float]]] = []
    for answer, score in top:
        for g in groups:
            if is_equiv(answer, g[0][0]):
                g.append((answer, score))
                break
        else:
            groups.append([(answer, score)])
    if not groups:
        return None, 0, 0.0
    best = max(groups, key=lambda g: (len(g), sum(s for _, s in g)))
    return best[0][0], len(best), float(sum(s for _, s in best))


def solve(problems: Sequence[Any], policy: StepPolicy, ppm: StepScorer, cfg, *, sandbox: Executor,
          runs: int | None = None, top_k: int | None = None, seed: int = 0, batch: int | None = None
          ) -> list[dict[str, Any]]:
    """Inference: `runs` searches per problem (all in one lockstep stream), answer by top-K PPM vote.

    Returns one record per problem, in input order: problem_id, answer, votes, score, correct (None
    without a gold answer), and every run's best (answer, score).
    """
    from rstar_jax.grading import is_equiv

    runs = int(runs if runs is not None else cfg.runs)
    top_k = int(top_k if top_k is not None else cfg.vote_top_k)
    how = check_terminal_score(cfg.terminal_score)
    stream = [_Run(f"{p.id}#run{r}", p.question, None, p, r) for p in problems for r in range(runs)]
    per_problem: dict[str, list[tuple[int, tuple[str, float] | None]]] = {str(p.id): [] for p in problems}

    def collect(tree: TreeRecord) -> None:
        pid, run = tree.problem_id.rsplit("#run", 1)
        per_problem[pid].append((int(run), best_terminal(tree, how)))

    LockstepSearch(policy, cfg, sandbox=sandbox, ppm=ppm, seed=seed, batch=batch).run(stream, collect, total=len(stream))
    out = []
    for p in problems:
        found = sorted(per_problem[str(p.id)])
        cands = [b for _, b in found if b is not None]
        answer, votes, score = vote(cands, top_k)
        gold = getattr(p, "answer", None)
        out.append({
            "problem_id": str(p.id), "answer": answer, "votes": votes, "score": score,
            "correct": None if gold is None else bool(answer is not None and is_equiv(answer, gold)),
            "runs": [{"run": r, "answer": b[0] if b else None, "score": b[1] if b else None} for r, b in found],
        })
    return out

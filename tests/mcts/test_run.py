"""Entry points: the resumable trees shard (including a kill -9 mid-run), process sharding, inference voting."""
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from rstar_jax.data import toyworld
from rstar_jax.mcts import ScriptedPolicy, search, solve
from rstar_jax.mcts.records import NodeRecord, TreeRecord, read_trees
from rstar_jax.mcts.run import best_terminal, path_score, vote
from mcts_helpers import make_cfg, problem

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROBLEMS = dict(n=6, seed=4, levels=(1, 2))
CFG = dict(rollouts=3, num_children=3, batch_trees=1, flush_every=2)

KILLER = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {here!r})
    from mcts_helpers import make_cfg
    from rstar_jax.data import toyworld
    from rstar_jax.mcts import ScriptedPolicy, search
    from rstar_jax.sandbox import Sandbox
    problems = toyworld.generate_problems(**{problems!r})
    def step(p, steps, n, rng):
        if p.id == problems[4].id:
            os.kill(os.getpid(), signal.SIGKILL)  # dies like a preempted host, nothing flushed on the way out
        return toyworld.teacher_next_steps(p, steps, n, rng)
    with Sandbox(workers=1, timeout_s=5.0, memory_mb=512) as sb:
        search(problems, ScriptedPolicy(step), make_cfg(**{cfg!r}), sandbox=sb, seed=1, out_dir={out!r},
               process_index=0, process_count=1)
""")


class Recorder:
    """The teacher as a step function that remembers which problems it was asked about."""

    def __init__(self):
        self.asked = set()

    def __call__(self, p, steps, n, rng):
        self.asked.add(p.id)
        return toyworld.teacher_next_steps(p, steps, n, rng)


def test_search_resumes_after_kill_9(tmp_path, sandbox):
    problems = toyworld.generate_problems(**PROBLEMS)
    out = tmp_path / "killed"
    code = KILLER.format(root=ROOT, here=os.path.dirname(__file__), problems=PROBLEMS, cfg=CFG, out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=240)
    assert proc.returncode == -9, proc.stderr[-2000:]
    parts = sorted(p.name for p in out.iterdir())
    assert parts == ["trees-00000-of-00001.jsonl.part-00000", "trees-00000-of-00001.jsonl.part-00001"]

    rec = Recorder()
    stats = search(problems, ScriptedPolicy(rec), make_cfg(**CFG), sandbox=sandbox, seed=1, out_dir=out,
                   process_index=0, process_count=1)
    assert rec.asked == {problems[4].id, problems[5].id}  # the four flushed trees are not redone
    assert stats.problems == 6
    assert sorted(p.name for p in out.iterdir()) == ["trees-00000-of-00001.jsonl", "trees-00000-of-00001.stats.json"]
    resumed = {t.problem_id: json.dumps(t.to_json(), sort_keys=True) for t in read_trees(out / "trees-00000-of-00001.jsonl")}

    clean = tmp_path / "clean"
    search(problems, ScriptedPolicy(Recorder()), make_cfg(**CFG), sandbox=sandbox, seed=1, out_dir=clean,
           process_index=0, process_count=1)
    straight = {t.problem_id: json.dumps(t.to_json(), sort_keys=True) for t in read_trees(clean / "trees-00000-of-00001.jsonl")}
    assert resumed == straight and len(resumed) == 6

    again = Recorder()
    stats2 = search(problems, ScriptedPolicy(again), make_cfg(**CFG), sandbox=sandbox, seed=1, out_dir=out,
                    process_index=0, process_count=1)
    assert not again.asked and stats2.problems == 6 and stats2.rollouts == stats.rollouts


def test_processes_split_the_problems(tmp_path, sandbox):
    problems = toyworld.generate_problems(**PROBLEMS)
    ids = []
    for index in range(2):
        search(problems, ScriptedPolicy(Recorder()), make_cfg(**CFG), sandbox=sandbox, seed=1, out_dir=tmp_path,
               process_index=index, process_count=2)
        ids.append([t.problem_id for t in read_trees(tmp_path / f"trees-{index:05d}-of-00002.jsonl")])
    assert sorted(ids[0] + ids[1]) == sorted(p.id for p in problems)
    assert set(ids[0]) == {p.id for p in problems[0::2]}


def test_vote_pools_equivalent_answers_over_the_top_k():
    cands = [("5", 0.9), ("6", 0.8), ("6", 0.7), ("5.0", 0.2), ("5", 0.1)]
    assert vote(cands, top_k=3) == ("6", 2, pytest.approx(1.5))
    answer, votes, _ = vote(cands, top_k=5)
    assert answer == "5" and votes == 3  # "5.0" counts for "5"
    assert vote([], top_k=4) == (None, 0, 0.0)


def test_best_terminal_by_own_score_path_minimum_or_product():
    # root -> 1 (0.9) -> 3 answers "7" (0.8); root -> 2 (-0.5) -> 4 answers "8" (0.95); 5 is dead
    nodes = [NodeRecord(0, -1), NodeRecord(1, 0, ppm_score=0.9), NodeRecord(2, 0, ppm_score=-0.5),
             NodeRecord(3, 1, ppm_score=0.8, terminal="answer", answer="7"),
             NodeRecord(4, 2, ppm_score=0.95, terminal="answer", answer="8"),
             NodeRecord(5, 1, ppm_score=0.99, terminal="dead", dead_reason="error")]
    tree = TreeRecord("p", "q", None, nodes)
    assert best_terminal(tree) == ("8", pytest.approx(0.95))  # the reference: the terminal's own score
    assert best_terminal(tree, "min") == ("7", pytest.approx(0.8))  # "8" sits under a -0.5 step
    # "prod": log of the product of (1 + s) / 2 -- "7": 0.95 * 0.9 = 0.855 beats "8": 0.25 * 0.975
    assert best_terminal(tree, "prod") == ("7", pytest.approx(math.log(0.95 * 0.9)))
    assert path_score([0.9, None, -1.0], "prod") == -math.inf  # a step scored -1 has no chance of being right
    nodes[1].ppm_score = None  # unscored steps are skipped, not counted as low
    assert best_terminal(tree, "min") == ("7", pytest.approx(0.8))
    assert best_terminal(tree, "prod") == ("7", pytest.approx(math.log(0.9)))
    with pytest.raises(ValueError, match="terminal_score='mean'"):
        best_terminal(tree, "mean")


class AnswerScorer:
    """A scripted PPM: high for texts whose program printed 5, mildly negative otherwise."""

    def score(self, texts, prefixes=None):
        return np.array([0.9 if "<output>5" in t else -0.2 for t in texts])


def test_solve_votes_over_runs_without_showing_the_gold_answer(sandbox):
    seen_answers = []

    def policy(p, steps, n, rng):
        seen_answers.append(p.answer)
        if not steps:
            return ["<code>\nx = 3\n<end_of_step>", "<code>\nx = 4\n<end_of_step>"][:: 1 if rng.random() < 0.5 else -1]
        return ["y = x + 2\nprint(y)\n<end_of_code>"]

    out = solve([problem("a"), problem("b", answer="6")], ScriptedPolicy(policy), AnswerScorer(),
                make_cfg(rollouts=4, num_children=2, q_init="ppm"), sandbox=sandbox, runs=3, top_k=2)
    assert set(seen_answers) == {None}
    assert [r["problem_id"] for r in out] == ["a", "b"]
    for r in out:
        assert [x["run"] for x in r["runs"]] == [0, 1, 2]
        assert all(x == {"run": x["run"], "answer": "5", "score": pytest.approx(0.9)} for x in r["runs"])
        assert (r["answer"], r["votes"]) == ("5", 2)
    assert out[0]["correct"] is True and out[1]["correct"] is False

"""The lockstep driver on scripted policies with the real sandbox and grader: rules, values, batching."""
import json

import numpy as np
import pytest

from rstar_jax.data import toyworld
from rstar_jax.mcts import ScriptedPolicy
from rstar_jax.mcts.search import LockstepSearch
from mcts_helpers import make_cfg, problem

C = "<code>\n# Step 1: x is three\nx = 3\n<end_of_step>"
W = "<code>\n# Step 1: x is four\nx = 4\n<end_of_step>"
FINAL = "# Now print the final answer\ny = x + 2\nprint(y)\n<end_of_code>"
ERR = "z = 1 / 0\n<end_of_step>"


def two_branches(problem, steps, n, rng):
    """Root: a right and a wrong first step; below: print the answer, or a step that raises."""
    return [C, W] if not steps else [FINAL, ERR]


def run(policy, problems, cfg, sandbox, **kw):
    trees = []
    stats = LockstepSearch(policy, cfg, sandbox=sandbox, **kw).run(problems, trees.append)
    return trees, stats


def table(tree):
    return [(n.parent, n.visits, n.value_sum, n.terminal, n.dead_reason) for n in tree.nodes]


def test_small_tree_matches_hand_computed_values(sandbox):
    (tree,), stats = run(ScriptedPolicy(two_branches), [problem("p")], make_cfg(rollouts=8, num_children=2), sandbox)
    # Rollout 1: root -> [C, W]; C (first of equal scores) -> [final (+1, backed up), error step (dead, -1 alone)].
    # Node C is then exhausted; rollout 2 takes W -> [final (-1, backed up), dead]; rollout 3 finds the root exhausted.
    assert table(tree) == [
        (-1, 2, 0.0, None, None),
        (0, 1, 1.0, None, None),
        (0, 1, -1.0, None, None),
        (1, 1, 1.0, "answer", None),
        (1, 1, -1.0, "dead", "error"),
        (2, 1, -1.0, "answer", None),
        (2, 1, -1.0, "dead", "error"),
    ]
    assert [n.answer for n in tree.nodes] == [None, None, None, "5", None, "6", None]
    assert [n.correct for n in tree.nodes] == [None, None, None, True, None, False, None]
    assert tree.nodes[3].text.endswith("<end_of_answer>") and "<output>5" in tree.nodes[3].text
    assert "ZeroDivisionError" in tree.nodes[4].error
    assert tree.stats["rollouts"] == 2 and stats.rollouts == 2 and stats.solved == 1
    assert stats.programs == 6 and stats.expansions == 3


def test_errors_threshold_counts_consecutive_errors(sandbox):
    (tree,), _ = run(ScriptedPolicy(two_branches), [problem("p")],
                     make_cfg(rollouts=8, num_children=2, errors_threshold=2), sandbox)
    # The erroring step now survives (one error) and is expanded; its children rerun its code, so
    # they reach two consecutive errors and die. Dead children leave their parent unvisited.
    assert table(tree) == [
        (-1, 2, 0.0, None, None),
        (0, 1, 1.0, None, None),
        (0, 1, -1.0, None, None),
        (1, 1, 1.0, "answer", None),
        (1, 0, 0.0, None, None),
        (4, 1, -1.0, "dead", "error"),
        (4, 1, -1.0, "dead", "error"),
        (2, 1, -1.0, "answer", None),
        (2, 0, 0.0, None, None),
        (8, 1, -1.0, "dead", "error"),
        (8, 1, -1.0, "dead", "error"),
    ]
    assert tree.nodes[4].error and tree.nodes[4].terminal is None


def test_depth_and_unparsable_and_unboxed_are_dead(sandbox):
    chain = ScriptedPolicy(lambda p, steps, n, rng: ["x = 1\n<end_of_step>", "x = 2  # no stop string"])
    (tree,), _ = run(chain, [problem("p")], make_cfg(rollouts=4, num_children=2, max_depth=2), sandbox)
    kinds = [(n.depth, n.terminal, n.dead_reason, n.visits, n.value_sum) for n in tree.nodes]
    assert kinds == [(0, None, None, 0, 0.0),
                     (1, None, None, 0, 0.0), (1, "dead", "unparsable", 1, -1.0),
                     (2, None, None, 0, 0.0), (2, "dead", "unparsable", 1, -1.0),
                     (3, "dead", "depth", 1, -1.0), (3, "dead", "unparsable", 1, -1.0)]
    unboxed = ScriptedPolicy(lambda p, s, n, rng: [FINAL.replace("y = x + 2", "x = 3\ny = x + 2")],
                             finish_fn=lambda p, s, partial, rng: "<answer>I am not sure<end_of_answer>")
    (tree,), _ = run(unboxed, [problem("p")], make_cfg(rollouts=2, num_children=1), sandbox)
    assert (tree.nodes[1].terminal, tree.nodes[1].dead_reason, tree.nodes[0].visits) == ("dead", "unparsable", 0)


def test_visits_concentrate_on_the_correct_branch(sandbox):
    """Wrong branch listed first: UCT explores it for a few rollouts, then the correct branch takes the rest."""
    def policy(problem, steps, n, rng):
        if not steps:
            return [W, C]
        return [f"# keep x\nx = x + {k} - {k}\n<end_of_step>" for k in rng.integers(1000, size=3)] + [FINAL]

    (tree,), stats = run(ScriptedPolicy(policy), [problem("p")],
                         make_cfg(rollouts=24, num_children=4, max_depth=5, max_nodes=512), sandbox)
    wrong, right = tree.nodes[1], tree.nodes[2]
    assert wrong.q == -1.0 and right.q == 1.0
    assert right.visits > 3 * wrong.visits > 0
    assert stats.rollouts == 24


def toy_policy(noise=1.0):
    return ScriptedPolicy(lambda p, steps, n, rng: toyworld.teacher_next_steps(p, steps, n, rng, noise))


def test_ppm_search_reuses_scored_paths_and_builds_the_same_trees(sandbox):
    """The search names each new node's parent text, so a caching PPM scorer runs only the new step."""
    from rstar_jax.mcts.scorer import PPMScorer
    from rstar_jax.models import Qwen2Config, init_model
    from rstar_jax.tokenizer import train_demo_tokenizer

    problems = toyworld.generate_problems(6, seed=5, levels=(2, 3))
    tok = train_demo_tokenizer(toyworld.tokenizer_corpus(problems, np.random.default_rng(0)), 300)
    ppm = init_model(Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024),
                     seed=1, ppm=True, head_init_std=0.5)
    cfg = make_cfg(rollouts=4, num_children=3, q_init="ppm", dedupe="code")
    trees, scorers = {}, {}
    for mb in (0, 16):
        scorers[mb] = PPMScorer(ppm, tok, batch_size=8, min_len=16, cache_mb=mb)
        trees[mb], _ = run(toy_policy(), problems, cfg, sandbox, ppm=scorers[mb], seed=2)
    scores = {mb: np.array([n.ppm_score for t in trees[mb] for n in t.nodes if n.ppm_score is not None]) for mb in trees}
    assert len(scores[0]) > 20
    np.testing.assert_allclose(scores[16], scores[0], atol=1e-5)
    shape = lambda mb: [[(n.parent, n.text, n.visits, n.terminal) for n in t.nodes] for t in trees[mb]]
    assert shape(16) == shape(0)
    assert len(scorers[16].cache) > 0 and scorers[16].tokens_scored < scorers[0].tokens_scored / 2


def strip(tree):
    return json.dumps(tree.to_json(), sort_keys=True)


def test_lockstep_equals_one_at_a_time_and_every_problem_once(sandbox):
    problems = toyworld.generate_problems(7, seed=3, levels=(1, 2, 3))
    cfg = make_cfg(rollouts=4, num_children=3, random_ties=True, dedupe="code")
    together, stats = run(toy_policy(), problems, cfg, sandbox, seed=11)
    assert sorted(t.problem_id for t in together) == sorted(p.id for p in problems)
    assert stats.problems == 7 and stats.rollouts == sum(t.stats["rollouts"] for t in together)
    cfg1 = make_cfg(rollouts=4, num_children=3, random_ties=True, dedupe="code", batch_trees=1)
    alone = {}
    for p in problems:
        (t,), _ = run(toy_policy(), [p], cfg1, sandbox, seed=11)
        alone[t.problem_id] = strip(t)
    assert {t.problem_id: strip(t) for t in together} == alone
    # A different seed gives different trees (the seeds really reach the policy).
    other, _ = run(toy_policy(), problems, cfg, sandbox, seed=12)
    assert {t.problem_id: strip(t) for t in other} != alone


def test_pipelined_groups_give_the_same_trees_and_every_problem_once(sandbox):
    # Groups take turns (one decodes while another's programs run); each tree's own sequence of
    # select / expand / backup is unchanged, so the trees are those of the plain lockstep search, also
    # with the round-4 retries and an execution cache that shares results of programs still running.
    problems = toyworld.generate_problems(9, seed=6, levels=(1, 2, 3))
    base = dict(rollouts=3, num_children=3, random_ties=True, extra_rollouts=[2], exec_cache=True)
    plain, s1 = run(toy_policy(noise=3.0), problems, make_cfg(**base), sandbox, seed=4)
    for groups in (2, 3, 8):
        piped, sg = run(toy_policy(noise=3.0), problems, make_cfg(pipeline_groups=groups, **base), sandbox, seed=4)
        assert sorted(t.problem_id for t in piped) == sorted(p.id for p in problems)
        assert {t.problem_id: strip(t) for t in piped} == {t.problem_id: strip(t) for t in plain}
        assert (sg.problems, sg.rollouts, sg.expansions) == (s1.problems, s1.rollouts, s1.expansions)
        assert sg.programs + sg.programs_cached == s1.programs + s1.programs_cached
    assert any(t.stats["attempt"] > 0 for t in plain)  # the retry path was exercised
    with pytest.raises(ValueError, match="pipeline_groups"):
        run(toy_policy(), problems, make_cfg(pipeline_groups=0), sandbox)


def test_round4_rule_retries_unsolved_problems_with_fresh_seeds(sandbox):
    guess = ScriptedPolicy(lambda p, s, n, rng: [f"print({rng.integers(0, 4)})\n<end_of_code>"])
    problems = [problem(i, answer="0") for i in range(8)]
    trees, stats = run(guess, problems, make_cfg(rollouts=1, num_children=1, extra_rollouts=[1, 1, 1]), sandbox, seed=5)
    assert len(trees) == 8
    attempts = []
    for t in trees:
        solved = any(n.correct for n in t.nodes)
        assert solved or t.stats["attempt"] == 3
        assert t.stats["rollouts"] == t.stats["attempt"] + 1
        attempts.append(t.stats["attempt"])
    assert min(attempts) == 0 and max(attempts) > 0
    assert stats.rollouts == sum(a + 1 for a in attempts)


class KeywordScorer:
    """A scripted PPM: +0.5 for texts whose first step sets x = 3, -0.5 otherwise."""

    def score(self, texts, prefixes=None):
        return np.array([0.5 if "x = 3" in t else -0.5 for t in texts])


def test_ppm_augmented_first_visit_is_not_backed_up(sandbox):
    (tree,), stats = run(ScriptedPolicy(two_branches), [problem("p")],
                         make_cfg(rollouts=1, num_children=2, q_init="ppm"), sandbox, ppm=KeywordScorer())
    root, c, w = tree.nodes[:3]
    assert (c.visits, c.value_sum, c.ppm_score) == (1 + 1, 0.5 + 1.0, 0.5)  # PPM first visit + the +1 backup
    assert (w.visits, w.value_sum, w.ppm_score) == (1, -0.5, -0.5)
    assert (root.visits, root.value_sum) == (1, 1.0)  # only the terminal reward reached the root
    assert stats.ppm_scored == 2


def test_bad_problems_are_named(sandbox):
    from rstar_jax.io import InputError

    with pytest.raises(InputError, match="duplicate problem id"):
        run(ScriptedPolicy(two_branches), [problem("a"), problem("a")], make_cfg(), sandbox)
    with pytest.raises(InputError, match="problem #1.*question"):
        run(ScriptedPolicy(two_branches), [problem("a", question="  ")], make_cfg(), sandbox)


def test_exec_cache_gives_the_same_trees_and_runs_each_program_once(sandbox):
    # A step without new code repeats its parent's program exactly; the cache must answer it.
    def policy_fn(p, steps, n, rng):
        if len(steps) >= 2:
            return ["print(5)\n<end_of_code>", "print(4)\n<end_of_code>"]
        return [f"x{len(steps)} = {rng.integers(0, 3)}\n<end_of_step>", "# think first\n<end_of_step>"]

    problems = toyworld.generate_problems(5, seed=4, levels=(1, 2))
    cfg = make_cfg(rollouts=6, num_children=2, random_ties=True)
    plain, s0 = run(ScriptedPolicy(policy_fn), problems, cfg, sandbox, seed=3)
    cached_cfg = make_cfg(rollouts=6, num_children=2, random_ties=True, exec_cache=True)
    cached, s1 = run(ScriptedPolicy(policy_fn), problems, cached_cfg, sandbox, seed=3)
    assert {t.problem_id: strip(t) for t in cached} == {t.problem_id: strip(t) for t in plain}
    assert s0.programs_cached == 0 and s1.programs_cached > 0
    assert s1.programs + s1.programs_cached == s0.programs
    # The toy teacher too (dedupe by code, lockstep): the same trees with and without the cache.
    toy = toyworld.generate_problems(6, seed=5, levels=(1, 2, 3))
    a, _ = run(toy_policy(), toy, make_cfg(rollouts=4, num_children=3, dedupe="code"), sandbox, seed=2)
    b, sb = run(toy_policy(), toy, make_cfg(rollouts=4, num_children=3, dedupe="code", exec_cache=True), sandbox, seed=2)
    assert {t.problem_id: strip(t) for t in a} == {t.problem_id: strip(t) for t in b}
    # The cache is per search: one tree at a time reuses exactly as much as lockstep does.
    c, sc = run(toy_policy(), toy, make_cfg(rollouts=4, num_children=3, dedupe="code", exec_cache=True,
                                            batch_trees=1), sandbox, seed=2)
    assert {t.problem_id: strip(t) for t in c} == {t.problem_id: strip(t) for t in b}
    assert sc.programs + sc.programs_cached == sb.programs + sb.programs_cached
    assert abs(sc.programs - sb.programs) <= 2  # only a final and a plain step with equal code can differ

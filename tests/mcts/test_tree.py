"""Tree arrays: UCT selection by hand-computed scores, exhaustion, rollout starts, expand/backup, reset and grow."""
import dataclasses
import math

import numpy as np

from rstar_jax.mcts import tree as T

KW = dict(c=2.0, unvisited_score=0.0, random_ties=False)


def _keys(b):
    return np.zeros((b, 2), np.uint32)


def _expand(tree, leaf, kinds, visits=None, values=None, backup=None):
    """Adds children of the given kinds under leaf[b] (one list per tree); backup: (value, count) per tree."""
    b, _, w = tree.shape
    count = np.array([len(k) for k in kinds], np.int32)
    kind = np.zeros((b, w), np.int32)
    vis = np.zeros((b, w), np.int32)
    val = np.zeros((b, w), np.float32)
    for i, ks in enumerate(kinds):
        kind[i, : len(ks)] = ks
        if visits is not None:
            vis[i, : len(ks)] = visits[i]
            val[i, : len(ks)] = values[i]
    bv = np.array([x[0] for x in backup], np.float32) if backup else np.zeros(b, np.float32)
    bc = np.array([x[1] for x in backup], np.int32) if backup else np.zeros(b, np.int32)
    return T.expand_and_backup(tree, np.asarray(leaf, np.int32), count, kind, vis, val, val.copy(),
                               np.full((b, w), np.nan, np.float32), bv, bc)


def _select(tree, can_start=True, active=True, **kw):
    b = tree.shape[0]
    return T.select(tree, _keys(b), np.full(b, can_start), np.full(b, active), **{**KW, **kw})


def test_first_select_starts_a_rollout_at_the_root():
    tree = T.init_tree(2, 8, 3)
    tree, leaf, started, done = _select(tree)
    assert leaf.tolist() == [0, 0] and started.tolist() == [True, True] and done.tolist() == [False, False]
    tree, leaf, started, done = _select(T.init_tree(2, 8, 3), can_start=False)
    assert leaf.tolist() == [-1, -1] and done.tolist() == [True, True]


def test_uct_scores_match_hand_computation():
    # Root with 3 inner children; give them visits/values directly and check which one UCT picks.
    tree = T.init_tree(1, 8, 3)
    tree = _expand(tree, [0], [[0, 0, 0]], visits=[[2, 1, 0]], values=[[0.5, -1.0, 0.0]])
    tree = T.backup(tree, np.array([0]), np.array([0.0], np.float32), np.array([3]))  # root N = 3
    # child1: 0.25 + 2*sqrt(ln3/2) = 1.732; child2: -1 + 2*sqrt(ln3/1) = 1.096; child3 unvisited: 0
    s1 = 0.25 + 2 * math.sqrt(math.log(3) / 2)
    s2 = -1 + 2 * math.sqrt(math.log(3) / 1)
    assert s1 > s2 > 0
    tree = dataclasses.replace(tree, cursor=np.array([-1], np.int32))  # a new rollout from the root
    _, leaf, _, _ = _select(tree)
    assert leaf.tolist() == [1]
    # With the unvisited score raised above both, the unvisited child wins (a config choice).
    _, leaf, _, _ = _select(tree, unvisited_score=5.0)
    assert leaf.tolist() == [3]
    # A larger c favours the less-visited child 2.
    s1, s2 = 0.25 + 10 * math.sqrt(math.log(3) / 2), -1 + 10 * math.sqrt(math.log(3))
    assert s2 > s1
    _, leaf, _, _ = _select(tree, c=10.0)
    assert leaf.tolist() == [2]


def test_terminals_are_skipped_and_exhaustion_ends_the_rollout():
    tree = T.init_tree(1, 16, 2)
    tree, leaf, _, _ = _select(tree)
    tree = _expand(tree, leaf, [[T.INNER, T.INNER]])
    tree, leaf, started, _ = _select(tree)  # continues from the cursor (root) to its first child
    assert leaf.tolist() == [1] and not started[0]
    # Node 1 gets two terminal children (one answer backed up +1, one dead): it is exhausted.
    tree = _expand(tree, leaf, [[T.ANSWER, T.DEAD]], visits=[[1, 1]], values=[[1.0, -1.0]], backup=[(1.0, 1)])
    np.testing.assert_array_equal(np.asarray(tree.visits[0, :5]), [1, 1, 0, 1, 1])
    np.testing.assert_allclose(np.asarray(tree.value_sum[0, :5]), [1, 1, 0, 1, -1])
    tree, leaf, started, done = _select(tree)
    # The rollout standing on node 1 ends there; a new one starts at the root and picks node 2:
    # node 1 is exhausted even though its Q (+1) would win.
    assert leaf.tolist() == [2] and started.tolist() == [True] and not done[0]
    assert bool(tree.exhausted[0, 1]) and not bool(tree.exhausted[0, 0])
    tree = _expand(tree, leaf, [[T.DEAD]], visits=[[1]], values=[[-1.0]])
    tree, leaf, started, done = _select(tree)
    # Everything below the root is terminal now: the root is exhausted and the tree is done.
    assert leaf.tolist() == [-1] and done.tolist() == [True] and not started[0]
    assert bool(tree.exhausted[0, 0])


def test_rollout_budget_stops_new_rollouts():
    tree = T.init_tree(1, 16, 2)
    tree, leaf, _, _ = _select(tree)
    tree = _expand(tree, leaf, [[T.INNER, T.INNER]])
    tree, leaf, _, _ = _select(tree)
    tree = _expand(tree, leaf, [[T.DEAD]], visits=[[1]], values=[[-1.0]])
    tree, leaf, started, done = _select(tree, can_start=False)
    assert leaf.tolist() == [-1] and done.tolist() == [True]


def test_inactive_trees_are_untouched():
    tree = T.init_tree(2, 8, 2)
    tree2, leaf, started, done = T.select(tree, _keys(2), np.array([True, True]), np.array([True, False]), **KW)
    assert leaf.tolist() == [0, -1] and started.tolist() == [True, False] and done.tolist() == [False, False]
    assert np.asarray(tree2.cursor).tolist() == [0, -1]


def test_backup_updates_the_whole_path_only():
    tree = T.init_tree(1, 16, 2)
    tree = _expand(tree, [0], [[T.INNER, T.INNER]])
    tree = _expand(tree, [1], [[T.INNER, T.INNER]])
    tree = _expand(tree, [3], [[T.INNER]])
    tree = T.backup(tree, np.array([5]), np.array([-0.5], np.float32), np.array([2]))
    np.testing.assert_array_equal(np.asarray(tree.visits[0, :6]), [2, 2, 0, 2, 0, 2])
    np.testing.assert_allclose(np.asarray(T.q_values(tree)[0, :6]), [-0.25, -0.25, 0, -0.25, 0, -0.25])
    np.testing.assert_array_equal(np.asarray(tree.parent[0, :6]), [-1, 0, 0, 1, 1, 3])
    np.testing.assert_array_equal(np.asarray(tree.depth[0, :6]), [0, 1, 1, 2, 2, 3])


def test_batch_equals_each_tree_alone():
    """The vmapped batch computes exactly what each tree computes on its own."""
    rng = np.random.default_rng(0)

    def drive(b_trees, script):
        tree = T.init_tree(b_trees, 64, 3)
        leaves = []
        for kinds in script:
            tree, leaf, _, _ = T.select(tree, _keys(b_trees), np.ones(b_trees, bool), np.ones(b_trees, bool),
                                        c=2.0, unvisited_score=0.0, random_ties=True)
            leaf = np.asarray(leaf)
            leaves.append(leaf.copy())
            ks = [k if l >= 0 else [] for k, l in zip(kinds, leaf)]
            vals = [[{T.ANSWER: 1.0, T.DEAD: -1.0, T.INNER: 0.0}[x] for x in k] for k in ks]
            vis = [[int(x != T.INNER) for x in k] for k in ks]
            bk = [(sum(v for v, x in zip(vv, k) if x == T.ANSWER), sum(x == T.ANSWER for x in k)) for vv, k in zip(vals, ks)]
            tree = _expand(tree, leaf, ks, visits=vis, values=vals, backup=bk)
        return tree, np.stack(leaves, 1)

    script = [[list(rng.choice([T.INNER, T.INNER, T.ANSWER, T.DEAD], size=rng.integers(1, 4))) for _ in range(3)]
              for _ in range(12)]
    batch_tree, batch_leaves = drive(3, script)
    for b in range(3):
        alone_tree, alone_leaves = drive(1, [[step[b]] for step in script])
        np.testing.assert_array_equal(batch_leaves[b], alone_leaves[0])
        for name in ("visits", "value_sum", "parent", "terminal", "exhausted"):
            np.testing.assert_array_equal(np.asarray(getattr(batch_tree, name))[b], np.asarray(getattr(alone_tree, name))[0])


def test_reset_and_grow():
    tree = T.init_tree(2, 4, 2)
    tree = _expand(tree, [0, 0], [[T.INNER, T.INNER], [T.INNER]])
    grown = T.grow(tree, 8)
    assert grown.shape == (2, 8, 2)
    np.testing.assert_array_equal(np.asarray(grown.num_nodes), [3, 2])
    np.testing.assert_array_equal(np.asarray(grown.parent[:, :4]), np.asarray(tree.parent))
    assert np.all(np.asarray(grown.parent[:, 4:]) == -1)
    reset = T.reset(grown, np.array([True, False]))
    np.testing.assert_array_equal(np.asarray(reset.num_nodes), [1, 2])
    assert np.all(np.asarray(reset.children[0]) == -1)
    np.testing.assert_array_equal(np.asarray(reset.children[1]), np.asarray(grown.children[1]))

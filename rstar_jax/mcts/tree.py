"""B search trees as arrays (batch first) and the pure functions that walk and update them.

Node 0 of every tree is the root. Children of a node are stored in a fixed-width row
(`children[b, n, :]`, -1 where empty), so a whole batch of trees is a handful of [B, N] and
[B, N, W] arrays. `select`, `expand` and `backup` are vmapped over trees and jitted once per
(B, N, W); everything that cannot run on device (decoding, executing code, grading) happens on
the host between a `select` and the following `expand`.

Selection follows the reference: a child's score is `Q + c * sqrt(ln N_parent / N_child)`,
terminal children are never selected, and a node all of whose children are terminal (or
exhausted themselves) is marked `exhausted` and skipped from then on.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

# Values of `Tree.terminal`.
INNER, ANSWER, DEAD = 0, 1, 2


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Tree:
    """State of B trees with room for N nodes each and up to W children per node."""

    visits: jax.Array  # [B, N] int32
    value_sum: jax.Array  # [B, N] float32
    parent: jax.Array  # [B, N] int32, -1 for the root and for unused slots
    children: jax.Array  # [B, N, W] int32, -1 where empty
    depth: jax.Array  # [B, N] int32, root 0
    terminal: jax.Array  # [B, N] int32: INNER, ANSWER or DEAD
    expanded: jax.Array  # [B, N] bool: children were sampled (possibly none survived)
    exhausted: jax.Array  # [B, N] bool: expanded, and no child is left to select
    reward: jax.Array  # [B, N] float32: terminal reward (0 for inner nodes)
    ppm_score: jax.Array  # [B, N] float32: PPM step score, NaN where not scored
    num_nodes: jax.Array  # [B] int32: nodes in use
    cursor: jax.Array  # [B] int32: node the current rollout stands on, -1 between rollouts

    @property
    def shape(self) -> tuple[int, int, int]:
        """(B, N, W)."""
        return self.children.shape


def init_tree(batch: int, num_nodes: int, width: int) -> Tree:
    """B empty trees (a root each, no rollout in progress)."""
    b, n, w = batch, num_nodes, width
    return Tree(
        visits=jnp.zeros((b, n), jnp.int32),
        value_sum=jnp.zeros((b, n), jnp.float32),
        parent=jnp.full((b, n), -1, jnp.int32),
        children=jnp.full((b, n, w), -1, jnp.int32),
        depth=jnp.zeros((b, n), jnp.int32),
        terminal=jnp.zeros((b, n), jnp.int32),
        expanded=jnp.zeros((b, n), bool),
        exhausted=jnp.zeros((b, n), bool),
        reward=jnp.zeros((b, n), jnp.float32),
        ppm_score=jnp.full((b, n), jnp.nan, jnp.float32),
        num_nodes=jnp.ones((b,), jnp.int32),
        cursor=jnp.full((b,), -1, jnp.int32),
    )


@jax.jit
def reset(tree: Tree, mask: jax.Array) -> Tree:
    """Empties the trees where `mask` [B] is set (a slot handed to the next problem)."""
    b, n, w = tree.shape
    fresh = init_tree(b, n, w)
    pick = lambda new, old: jnp.where(mask.reshape((b,) + (1,) * (old.ndim - 1)), new, old)
    return jax.tree.map(pick, fresh, tree)


def grow(tree: Tree, num_nodes: int) -> Tree:
    """The same trees with room for `num_nodes` nodes each (host-side; triggers one recompile)."""
    b, n, w = tree.shape
    if num_nodes <= n:
        return tree
    fresh = init_tree(b, num_nodes, w)
    return jax.tree.map(lambda new, old: old if old.ndim < 2 else new.at[:, :n].set(old), fresh, tree)


def q_values(tree: Tree) -> jax.Array:
    """Q = value_sum / visits, 0 for unvisited nodes. [B, N]."""
    return jnp.where(tree.visits > 0, tree.value_sum / jnp.maximum(tree.visits, 1), 0.0)


def _child_scores(t: Tree, node: jax.Array, c: float, unvisited_score: float) -> tuple[jax.Array, jax.Array]:
    """UCT scores of one tree's node's children, and which of them may be selected. [W] each."""
    kids = t.children[node]
    idx = jnp.maximum(kids, 0)
    visits = t.visits[idx]
    q = t.value_sum[idx] / jnp.maximum(visits, 1)
    parent_visits = t.visits[node]
    bonus = c * jnp.sqrt(jnp.log(jnp.maximum(parent_visits, 1)) / jnp.maximum(visits, 1))
    bonus = jnp.where((parent_visits > 0) & (visits > 0), bonus, 0.0)
    score = jnp.where(visits > 0, q + bonus, unvisited_score)
    valid = (kids >= 0) & (t.terminal[idx] == INNER) & ~t.exhausted[idx]
    return score, valid


def _select_one(t: Tree, key: jax.Array, can_start: jax.Array, active: jax.Array, c: float,
                unvisited_score: float, random_ties: bool):
    """Descends one tree from its cursor (or from the root for a new rollout) to a node to expand.

    Returns (tree, leaf, started, done): leaf is -1 when nothing is to be expanded; started says a
    new rollout began; done says the tree has no rollout left (or its root is exhausted).
    A descent from the root that runs into a node with no selectable child marks it exhausted and
    starts over from the root within the same rollout; a rollout continued from the cursor ends there.
    """
    # state: node (-1: need a new rollout), fresh (this rollout began in this call), status, exhausted, step
    searching, found, finished = 0, 1, 2

    def cond(s):
        return s[2] == searching

    def body(s):
        node, fresh, status, exhausted, step = s
        t_now = dataclasses.replace(t, exhausted=exhausted)
        new_rollout = node < 0
        may_start = can_start & ~fresh & ~exhausted[0]
        safe = jnp.maximum(node, 0)
        needs_expansion = ~t.expanded[safe] & (t.terminal[safe] == INNER)
        score, valid = _child_scores(t_now, safe, c, unvisited_score)
        best = jnp.max(jnp.where(valid, score, -jnp.inf))
        ties = valid & (score == best)
        if random_ties:
            noise = jax.random.uniform(jax.random.fold_in(key, step), ties.shape)
            choice = jnp.argmax(jnp.where(ties, noise, -1.0))
        else:
            choice = jnp.argmax(ties)
        has_child = jnp.any(valid)
        child = t.children[safe, choice]
        # Where the descent goes next.
        restart_node = jnp.where(fresh & (safe != 0), 0, -1)  # a fresh rollout retries from the root
        next_node = jnp.where(
            new_rollout, jnp.where(may_start, 0, -1),
            jnp.where(needs_expansion, node, jnp.where(has_child, child, restart_node)))
        next_status = jnp.where(
            new_rollout, jnp.where(may_start, searching, finished),
            jnp.where(needs_expansion, found, searching))
        root_dead = ~new_rollout & ~needs_expansion & ~has_child & (safe == 0)
        next_status = jnp.where(root_dead, finished, next_status)
        next_node = jnp.where(root_dead, -1, next_node)
        mark = ~new_rollout & ~needs_expansion & ~has_child
        exhausted = exhausted.at[safe].set(exhausted[safe] | mark)
        fresh = fresh | (new_rollout & may_start)
        return next_node, fresh, next_status, exhausted, step + 1

    init = (t.cursor, jnp.asarray(False), jnp.where(active, searching, finished), t.exhausted, jnp.asarray(0))
    node, fresh, status, exhausted, _ = jax.lax.while_loop(cond, body, init)
    leaf = jnp.where(status == found, node, -1)
    done = active & (status == finished)
    cursor = jnp.where(active, leaf, t.cursor)
    return dataclasses.replace(t, exhausted=exhausted, cursor=cursor), leaf, fresh & (leaf >= 0), done


@functools.partial(jax.jit, static_argnames=("c", "unvisited_score", "random_ties"))
def select(tree: Tree, keys: jax.Array, can_start: jax.Array, active: jax.Array, *, c: float,
           unvisited_score: float, random_ties: bool) -> tuple[Tree, jax.Array, jax.Array, jax.Array]:
    """Selects the node to expand in every active tree.

    keys: [B, 2] uint32 raw threefry keys (per tree and call, for random tie-breaking);
    can_start: [B] whether a tree may begin another rollout; active: [B] trees to touch.
    Returns (tree, leaf [B] (-1: none), started [B], done [B]).
    """
    keys = jax.random.wrap_key_data(keys, impl="threefry2x32")
    fn = functools.partial(_select_one, c=c, unvisited_score=unvisited_score, random_ties=random_ties)
    return jax.vmap(fn)(tree, keys, can_start, active)


def _expand_one(t: Tree, leaf, count, kind, visits, value, reward, ppm):
    n, w = t.children.shape[0], t.children.shape[1]
    safe = jnp.maximum(leaf, 0)
    slot = jnp.arange(w)
    use = (slot < count) & (leaf >= 0)
    ids = jnp.where(use, t.num_nodes + slot, n)  # index n is out of range: dropped by the scatters
    set_ = lambda a, v: a.at[ids].set(v, mode="drop")
    t = dataclasses.replace(
        t,
        parent=set_(t.parent, jnp.full((w,), leaf)),
        depth=set_(t.depth, jnp.full((w,), t.depth[safe] + 1)),
        terminal=set_(t.terminal, kind),
        visits=set_(t.visits, visits),
        value_sum=set_(t.value_sum, value),
        reward=set_(t.reward, reward),
        ppm_score=set_(t.ppm_score, ppm),
        children=t.children.at[safe].set(jnp.where(use, ids, t.children[safe]).astype(jnp.int32)),
        expanded=t.expanded.at[safe].set(t.expanded[safe] | (leaf >= 0)),
        num_nodes=t.num_nodes + jnp.where(leaf >= 0, count, 0),
    )
    return t


def expand(tree: Tree, leaf: jax.Array, count: jax.Array, kind: jax.Array, visits: jax.Array,
           value: jax.Array, reward: jax.Array, ppm: jax.Array) -> Tree:
    """Scatters up to W new children under `leaf` [B] (-1: none) in every tree.

    count [B]: children to add; kind, visits (first-visit count), value (their value sum),
    reward, ppm: [B, W] per new child, read where slot < count. New ids are num_nodes, num_nodes+1, ...
    """
    return jax.vmap(_expand_one)(tree, leaf, count, kind, visits, value, reward, ppm)


def _backup_one(t: Tree, node, value, count):
    def cond(s):
        return s[0] >= 0

    def body(s):
        n, visits, value_sum = s
        return t.parent[n], visits.at[n].add(count), value_sum.at[n].add(value)

    _, visits, value_sum = jax.lax.while_loop(cond, body, (node, t.visits, t.value_sum))
    return dataclasses.replace(t, visits=visits, value_sum=value_sum)


def backup(tree: Tree, node: jax.Array, value: jax.Array, count: jax.Array) -> Tree:
    """Adds `count` visits and `value` to `node` [B] and every ancestor up to the root (-1: nothing)."""
    return jax.vmap(_backup_one)(tree, node, value, count)


@functools.partial(jax.jit, donate_argnums=0)
def expand_and_backup(tree: Tree, leaf, count, kind, visits, value, reward, ppm, backup_value, backup_count) -> Tree:
    """One device call per iteration: new children, then their terminal rewards up the leaf's path.

    backup_value/backup_count [B]: sum and number of terminal rewards among the new children that
    are backed up; they pass through `leaf` and all its ancestors (each terminal's own visit is in
    `visits`/`value`).
    """
    tree = expand(tree, leaf, count, kind, visits, value, reward, ppm)
    return backup(tree, jnp.where(backup_count > 0, leaf, -1), backup_value, backup_count)

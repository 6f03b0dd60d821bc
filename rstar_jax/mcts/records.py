"""Search-tree records: one per problem, every node with enough to rebuild the tree (jsonl, one tree a line).

This is the contract between search (writer) and data selection / evaluation (readers).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from rstar_jax.io import InputError, require_field

TERMINAL_KINDS = (None, "answer", "dead")


@dataclasses.dataclass
class NodeRecord:
    """One search node. Node 0 is the root (empty text); `parent` is -1 only for the root."""

    id: int
    parent: int
    text: str = ""  # the step as the policy wrote it, stop string included
    depth: int = 0
    visits: int = 0
    value_sum: float = 0.0
    q: float = 0.0  # value_sum / visits (0 when unvisited)
    ppm_score: float | None = None  # tanh(r/5) from the PPM, when it scored this node
    terminal: str | None = None  # None (inner), "answer" (final answer given), "dead" (see dead_reason)
    dead_reason: str | None = None  # "error" | "depth" | "unparsable" | None
    answer: str | None = None  # extracted final answer, for answer terminals
    correct: bool | None = None  # answer graded against the ground truth (None without one)
    error: str | None = None  # last traceback line when this step's program failed
    output: str = ""  # program stdout after this step (capped as the sandbox caps it)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> "NodeRecord":
        require_field(obj, "id", int, where)
        require_field(obj, "parent", int, where)
        require_field(obj, "text", str, where)
        known = {f.name for f in dataclasses.fields(cls)}
        node = cls(**{k: v for k, v in obj.items() if k in known})
        if node.terminal not in TERMINAL_KINDS:
            raise InputError(f"{where}: field 'terminal' must be one of {TERMINAL_KINDS}, got {node.terminal!r}")
        return node


@dataclasses.dataclass
class TreeRecord:
    """A problem's whole search tree plus its run statistics."""

    problem_id: str
    question: str
    gold: str | None
    nodes: list[NodeRecord]
    stats: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "problem_id": self.problem_id,
            "question": self.question,
            "gold": self.gold,
            "nodes": [n.to_json() for n in self.nodes],
            "stats": self.stats,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> "TreeRecord":
        require_field(obj, "problem_id", (str, int), where)
        require_field(obj, "question", str, where)
        raw_nodes = require_field(obj, "nodes", list, where)
        nodes = []
        for i, raw in enumerate(raw_nodes):
            if not isinstance(raw, dict):
                raise InputError(f"{where}: nodes[{i}] must be an object")
            node = NodeRecord.from_json(raw, f"{where} nodes[{i}]")
            if node.id != i:
                raise InputError(f"{where} nodes[{i}]: field 'id' must equal its index {i}, got {node.id}")
            if i > 0 and not 0 <= node.parent < i:
                raise InputError(f"{where} nodes[{i}]: field 'parent' must name an earlier node, got {node.parent}")
            nodes.append(node)
        if not nodes or nodes[0].parent != -1:
            raise InputError(f"{where}: field 'nodes' must start with the root (parent -1)")
        return cls(str(obj["problem_id"]), obj["question"], obj.get("gold"), nodes, obj.get("stats", {}))

    def children(self) -> list[list[int]]:
        """Child ids of every node, in creation order."""
        kids: list[list[int]] = [[] for _ in self.nodes]
        for n in self.nodes[1:]:
            kids[n.parent].append(n.id)
        return kids

    def path(self, node_id: int) -> list[int]:
        """Node ids from the root's first child down to `node_id` (the root itself is excluded)."""
        out = []
        while node_id > 0:
            out.append(node_id)
            node_id = self.nodes[node_id].parent
        return out[::-1]

    def response(self, node_id: int) -> str:
        """The concatenated step texts from the root down to `node_id`: the policy's response so far."""
        return "".join(self.nodes[i].text for i in self.path(node_id))


def read_trees(path) -> list[TreeRecord]:
    """Reads a trees jsonl file; a malformed line raises InputError naming file, line and field."""
    from rstar_jax.io import read_jsonl

    return [TreeRecord.from_json(obj, f"{path}:{lineno}") for lineno, obj in read_jsonl(path)]


def write_trees(path, trees: list[TreeRecord]) -> int:
    """Writes trees as jsonl atomically."""
    from rstar_jax.io import write_jsonl

    return write_jsonl(path, (t.to_json() for t in trees))

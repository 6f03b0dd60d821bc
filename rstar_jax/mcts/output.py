"""Resumable trees shard: finished trees land in small numbered part files, merged once at the end.

A kill -9 loses at most the trees not yet flushed (`flush_every`); every part and the final shard
are written atomically (temporary name, then rename), so a reader never sees half a file and a
rerun skips every problem whose tree is in a part. The final shard `trees-00003-of-00016.jsonl`
appears only when the whole shard is done (its stats file is written just before it).
"""
from __future__ import annotations

import json
import re
from typing import Any

from etils import epath

from rstar_jax.io import atomic_write_text, read_jsonl
from rstar_jax.mcts.records import TreeRecord


def shard_name(process_index: int, process_count: int) -> str:
    """`trees-00003-of-00016.jsonl`."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} is not in [0, {process_count})")
    return f"trees-{process_index:05d}-of-{process_count:05d}.jsonl"


class TreeShardWriter:
    """Collects finished trees of one process; `finish` writes the shard and removes the parts."""

    def __init__(self, out_dir, process_index: int, process_count: int, flush_every: int):
        self.dir = epath.Path(out_dir)
        self.name = shard_name(process_index, process_count)
        self.path = self.dir / self.name
        self.stats_path = self.dir / self.name.replace(".jsonl", ".stats.json")
        self.flush_every = max(1, int(flush_every))
        self.pending: list[str] = []
        self._part_re = re.compile(re.escape(self.name) + r"\.part-(\d{5})$")
        self.parts = sorted(p for p in self.dir.glob(f"{self.name}.part-*") if self._part_re.search(p.name)) \
            if self.dir.exists() else []
        self.next_part = 1 + max((int(self._part_re.search(p.name).group(1)) for p in self.parts), default=-1)

    @property
    def finished(self) -> bool:
        """Whether the final shard exists (then nothing is left to do)."""
        return self.path.exists()

    def resumed_trees(self) -> list[TreeRecord]:
        """Trees already flushed by an earlier, interrupted run (validated as they are read)."""
        return [TreeRecord.from_json(obj, f"{p}:{ln}") for p in self.parts for ln, obj in read_jsonl(p)]

    def add(self, tree: TreeRecord) -> None:
        self.pending.append(json.dumps(tree.to_json(), ensure_ascii=False))
        if len(self.pending) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        """Writes the pending trees as the next part file (atomically)."""
        if not self.pending:
            return
        part = self.dir / f"{self.name}.part-{self.next_part:05d}"
        atomic_write_text(part, "".join(line + "\n" for line in self.pending))
        self.parts.append(part)
        self.next_part += 1
        self.pending = []

    def finish(self, stats: dict[str, Any]) -> None:
        """Merges all parts into the final shard (stats first, shard last), then deletes the parts."""
        self.flush()
        atomic_write_text(self.stats_path, json.dumps(stats, indent=1) + "\n")
        atomic_write_text(self.path, "".join(p.read_text() for p in self.parts))
        self.cleanup()

    def cleanup(self) -> None:
        """Removes part files once the final shard exists."""
        for p in self.parts:
            p.unlink(missing_ok=True)
        self.parts = []

    def read_stats(self) -> dict[str, Any]:
        return json.loads(self.stats_path.read_text()) if self.stats_path.exists() else {}

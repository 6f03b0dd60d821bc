"""The per-run report: `report.json`, a printed table and `report.png` (accuracy by round and level).

The report is rebuilt from the finished stages' summaries every time, so it is always consistent
with what is on disk; accuracies are fractions in [0, 1].
"""
from __future__ import annotations

import io
import json
import os
from typing import Any

from etils import epath

from rstar_jax.io import atomic_write_bytes, atomic_write_text

_COLUMNS = (
    ("greedy", "greedy"),
    ("majority", "maj@N"),
    ("best_of_n", "bestN+PPM"),
    ("mcts_ppm", "MCTS+PPM"),
)


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:.3f}"
    return str(x)


def format_table(report: dict[str, Any]) -> str:
    """A fixed-width text table: one row per round (round 0 = base), the control and the equal-budget line."""
    head = ["round", *(label for _, label in _COLUMNS), "solved/searched", "PPM pair acc", "minutes"]
    rows = []
    for r in report.get("rounds", []):
        held = r.get("heldout", {})
        search = r.get("search") or {}
        solved = f"{search.get('solved', 0)}/{search.get('problems', 0)}" if search.get("problems") else "-"
        minutes = sum((r.get("seconds") or {}).values()) / 60.0
        rows.append([str(r["round"]), *(_fmt(held.get(k)) for k, _ in _COLUMNS), solved,
                     _fmt((r.get("ppm") or {}).get("pair_acc")), f"{minutes:.1f}"])
    control = (report.get("control") or {}).get("heldout")
    if control:
        rows.append(["control", *(_fmt(control.get(k)) for k, _ in _COLUMNS), "-", "-", "-"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows]
    levels = sorted({lvl for r in report.get("rounds", []) for lvl in (r.get("heldout", {}).get("by_level") or {})},
                    key=int)
    if levels:
        lines.append("")
        lines.append("greedy by level  " + "  ".join(f"L{l:>4}" for l in levels))
        for r in report.get("rounds", []):
            by = r.get("heldout", {}).get("by_level") or {}
            lines.append(f"round {r['round']:<10} " + "  ".join(_fmt(by.get(l)).rjust(5) for l in levels))
    sampled = [r for r in report.get("rounds", []) if (r.get("heldout") or {}).get("ranking")]
    if sampled:
        lines.append("")
        lines.append("sampled solutions: pass@N, and how often a score ranks a right one above a wrong one")
        for r in sampled:
            held = r["heldout"]
            lines.append(f"round {r['round']:<10} pass@N {_fmt(held.get('pass_at_n'))}  policy log-prob "
                         f"{_fmt(held['ranking'].get('policy'))}  PPM {_fmt(held['ranking'].get('ppm'))}")
    eq = report.get("equal_budget")
    if eq:
        lines.append("")
        parts = [f"{k}={_fmt(v)}" for k, v in eq.items() if k != "explanation" and not isinstance(v, dict)]
        lines.append("equal decoded-token budget: " + ", ".join(parts))
        if eq.get("explanation"):
            lines.append("  " + eq["explanation"])
    return "\n".join(lines)


def plot(report: dict[str, Any]) -> bytes:
    """PNG bytes: held-out accuracy by round (with the control) and greedy accuracy by level per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = report.get("rounds", [])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["round"] for r in rounds]
    for key, label in _COLUMNS:
        ys = [r.get("heldout", {}).get(key) for r in rounds]
        pts = [(x, y) for x, y in zip(xs, ys) if y is not None]
        if pts:
            ax1.plot(*zip(*pts), marker="o", label=label)
    control = ((report.get("control") or {}).get("heldout") or {}).get("greedy")
    if control is not None:
        ax1.axhline(control, color="gray", linestyle="--", label="control (greedy)")
    ax1.set(xlabel="round (0 = base)", ylabel="held-out accuracy", ylim=(0, 1), title="Self-evolution")
    ax1.set_xticks(xs)
    ax1.legend(loc="lower right", fontsize=8)
    for r in rounds:
        by = r.get("heldout", {}).get("by_level") or {}
        if by:
            lv = sorted(by, key=int)
            ax2.plot([int(l) for l in lv], [by[l] for l in lv], marker=".", label=f"round {r['round']}")
    ax2.set(xlabel="difficulty (operations)", ylabel="greedy accuracy", ylim=(0, 1), title="By level")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(workdir: str | os.PathLike, report: dict[str, Any], *, png: bool = True) -> str:
    """Writes report.json (and report.png) atomically under `workdir`; returns the printed table."""
    workdir = epath.Path(workdir)
    atomic_write_text(workdir / "report.json", json.dumps(report, indent=2, sort_keys=True))
    if png:
        atomic_write_bytes(workdir / "report.png", plot(report))
    return format_table(report)

import json

from rstar_jax import report

REPORT = {
    "rounds": [
        {"round": 0, "heldout": {"greedy": 0.29, "mcts_ppm": None, "by_level": {"1": 0.64, "2": 0.4}},
         "search": {"problems": 0, "solved": 0}, "ppm": {"pair_acc": None}, "seconds": {"train": 171.0}},
        {"round": 1, "heldout": {"greedy": 0.61, "majority": 0.66, "by_level": {"1": 0.9, "2": 0.7}, "pass_at_n": 0.79,
                                 "ranking": {"policy": 0.85, "ppm": 0.51}},
         "search": {"problems": 400, "solved": 310}, "ppm": {"pair_acc": 0.8}, "seconds": {"search": 60.0, "train": 30.0}},
    ],
    "control": {"heldout": {"greedy": 0.33}},
    "equal_budget": {"mcts": 0.7, "best_of_n": 0.6, "tokens": 100000, "explanation": "because"},
}


def test_write_report_files_and_table(tmp_path):
    table = report.write_report(tmp_path, REPORT)
    assert json.loads((tmp_path / "report.json").read_text()) == REPORT
    png = (tmp_path / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    lines = table.splitlines()
    assert lines[0].split()[:2] == ["round", "greedy"]
    row1 = next(line for line in lines if line.split()[0] == "1")
    assert "0.610" in row1 and "310/400" in row1 and "0.800" in row1 and "1.5" in row1
    assert any(line.startswith("control") and "0.330" in line for line in lines)
    assert "mcts=0.700" in table and "best_of_n=0.600" in table
    assert any(line.startswith("round 1") and "0.900" in line for line in lines)
    ranked = [line for line in lines if line.startswith("round") and "pass@N" in line]
    assert len(ranked) == 1 and all(x in ranked[0] for x in ("round 1", "0.790", "0.850", "0.510"))
    assert not list(tmp_path.glob(".*tmp*"))

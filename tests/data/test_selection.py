"""Selection of SFT examples and PPM pairs from hand-built search trees, and the jsonl readers' errors."""
import json
import random

import pytest

from rstar_jax.data import selection as sel
from rstar_jax.io import InputError
from rstar_jax.mcts.records import NodeRecord, TreeRecord, write_trees
from rstar_jax.steps import build_prompt

STEP_PAIRS_ONLY = sel.SelectionConfig(ppm_final_per_side=0)


def _step(tag: str) -> str:
    # Distinct tags give step texts far apart in edit distance.
    return f"# Step: {tag * 24}\nx_{tag} = {len(tag)}\n<end_of_step>"


def _tree(spec: list[tuple]) -> TreeRecord:
    """spec rows: (parent, text, q, terminal, correct, error)."""
    nodes = [NodeRecord(id=0, parent=-1)]
    for i, (parent, text, q, terminal, correct, error) in enumerate(spec, start=1):
        nodes.append(NodeRecord(id=i, parent=parent, text=text, depth=nodes[parent].depth + 1, q=q,
                                terminal=terminal, correct=correct, error=error,
                                dead_reason="error" if terminal == "dead" and error else None))
    return TreeRecord("p0", "What is 1+1?", "2", nodes)


def test_sft_ranks_by_mean_then_min_q_and_drops_errors():
    tree = _tree([
        (0, _step("a"), 0.9, None, None, None),  # 1
        (1, _step("b") + "<answer>2<end_of_answer>", 0.5, "answer", True, None),  # 2: mean .7 min .5
        (1, _step("c") + "<answer>2<end_of_answer>", 0.5, "answer", True, None),  # 3: same as 2 -> tie
        (0, _step("d"), 0.7, None, None, "NameError: x"),  # 4: errored step
        (4, _step("e") + "<answer>2<end_of_answer>", 1.0, "answer", True, None),  # 5: best Q but error on path
        (0, _step("f"), 0.8, None, None, None),  # 6
        (6, _step("g") + "<answer>2<end_of_answer>", 0.6, "answer", True, None),  # 7: mean .7 min .6 -> first
        (6, _step("h") + "<answer>3<end_of_answer>", 1.0, "answer", False, None),  # 8: wrong answer
    ])
    got = sel.select_sft(tree)
    assert [e.response for e in got] == [tree.response(7), tree.response(2)]
    assert all(e.query == tree.question for e in got)
    assert sel.select_sft(tree, sel.SelectionConfig(sft_per_problem=5))[2].response == tree.response(3)


def test_ppm_pairs_follow_the_reference_rules():
    tree = _tree([
        (0, _step("a"), 0.9, "answer", True, None),  # 1 pos
        (0, _step("b"), 0.8, "answer", True, None),  # 2 pos
        (0, _step("c"), 0.7, "answer", True, None),  # 3 pos candidate, not in top 2
        (0, _step("d"), -0.9, "answer", False, None),  # 4 neg
        (0, _step("e"), 0.5, "answer", False, None),  # 5 neg, margin to 2 is .3 -> dropped with 2, kept with 1
        (0, _step("f"), 0.0, "dead", None, "ZeroDivisionError"),  # 6 dead counts as wrong, not in bottom 2
    ])
    pairs = sel.select_ppm(tree, STEP_PAIRS_ONLY)
    got = {(p.pos, p.neg) for p in pairs}
    # bottom-2 negatives are 4 (-0.9) and 6 (0.0); every pair clears the 0.5 margin
    assert got == {(_step(a), _step(b)) for a in "ab" for b in "df"}
    assert all(p.prompt == build_prompt(tree.question) for p in pairs)
    assert all((p.pos_count, p.neg_count) == (2, 2) for p in pairs)
    assert sum(p.weight for p in pairs) == pytest.approx(1.0)


def test_ppm_margin_edit_distance_and_other_side_rule():
    near = _step("a")[:-14] + "y = 1<end_of_step>"  # a few characters from step "a"
    tree = _tree([
        (0, _step("s"), 0.2, None, None, None),  # 1: shared prefix
        (1, _step("a"), 0.9, "answer", True, None),  # 2: the only positive -> up to 4 negatives
        (1, _step("b"), -1.0, "answer", False, None),  # 3
        (1, _step("c"), -0.8, "answer", False, None),  # 4
        (1, _step("d"), 0.1, "answer", False, None),  # 5
        (1, near, -0.5, "answer", False, None),  # 6: too close in text
        (1, _step("e"), 0.6, "answer", False, None),  # 7: margin 0.3 < 0.5
    ])
    pairs = sel.select_ppm(tree, STEP_PAIRS_ONLY)
    assert {p.neg for p in pairs} == {_step("b"), _step("c"), _step("d")}
    assert {p.pos for p in pairs} == {_step("a")}
    assert all(p.prompt == build_prompt(tree.question) + _step("s") for p in pairs)
    assert all((p.pos_count, p.neg_count) == (1, 3) for p in pairs)
    assert sel.edit_distance(_step("a"), near) < 20


def test_child_with_both_outcomes_is_not_paired_with_itself():
    tree = _tree([
        (0, _step("a"), 0.9, None, None, None),  # 1: has a correct and a wrong descendant
        (1, _step("x"), 1.0, "answer", True, None),
        (1, _step("y"), -1.0, "answer", False, None),
        (0, _step("b"), -0.5, "answer", False, None),  # 4
    ])
    root_pairs = [p for p in sel.select_ppm(tree, STEP_PAIRS_ONLY) if p.prompt == build_prompt(tree.question)]
    assert [(p.pos, p.neg) for p in root_pairs] == [(_step("a"), _step("b"))]


def test_final_answer_pairs_compare_whole_trajectories_by_mean_q():
    ans = lambda tag, v: _step(tag) + f"<answer>{v}<end_of_answer>"  # noqa: E731
    tree = _tree([
        (0, _step("s"), 0.0, None, None, None),  # 1: shared first step
        (1, ans("a", 2), 1.0, "answer", True, None),  # 2: correct, mean .5
        (1, _step("b"), 0.4, None, None, None),  # 3
        (3, ans("c", 2), 1.0, "answer", True, None),  # 4: correct, mean .47
        (3, ans("d", 2), 0.6, "answer", True, None),  # 5: correct, mean .33 -> third, not taken
        (1, ans("e", 5), -1.0, "answer", False, None),  # 6: wrong, mean -.5 -> lowest
        (3, ans("f", 7), -1.0, "answer", False, None),  # 7: wrong, mean -.2
        (3, ans("g", 8), 0.2, "answer", False, None),  # 8: wrong, mean .2 -> third, not taken
        (1, _step("h"), -1.0, "dead", None, "NameError: y"),  # 9: dead ends have no final answer
    ])
    final = [p for p in sel.select_ppm(tree) if p.pos.endswith("<end_of_answer>") and p.pos.startswith(_step("s"))]
    # Top correct 2, 4 x bottom wrong 6, 7; (2, 6) and (4, 7) are already step pairs at nodes 1 and 3.
    assert {(p.pos, p.neg) for p in final} == {(tree.response(2), tree.response(7)), (tree.response(4), tree.response(6))}
    assert all(p.prompt == build_prompt(tree.question) and (p.pos_count, p.neg_count) == (2, 2) for p in final)
    # Step pairs are unchanged by the final rule; with it off, or without any wrong answer, there are none.
    steps = sel.select_ppm(tree, STEP_PAIRS_ONLY)
    assert sel.select_ppm(tree) == steps + final
    one_side = _tree([(0, _step("s"), 0.0, None, None, None), (1, ans("a", 2), 1.0, "answer", True, None),
                      (1, ans("c", 2), 0.5, "answer", True, None)])
    assert sel.select_ppm(one_side) == []
    # Two one-step answers are already a pair at the root: the final rule does not repeat it.
    siblings = _tree([(0, ans("a", 2), 0.9, "answer", True, None), (0, ans("b", 3), -0.9, "answer", False, None)])
    assert sel.select_ppm(siblings) == sel.select_ppm(siblings, STEP_PAIRS_ONLY) != []


@pytest.mark.parametrize("seed", range(20))
def test_edit_distance_matches_textbook_dp(seed):
    rng = random.Random(seed)
    a = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 30)))
    b = "".join(rng.choice("abcé ") for _ in range(rng.randint(0, 30)))
    d = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        prev, d[0] = d[:], i
        for j in range(1, len(b) + 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (a[i - 1] != b[j - 1]))
    assert sel.edit_distance(a, b) == d[-1]
    assert sel.far_apart(a, b, 5) == (d[-1] >= 5)


def test_files_round_trip_and_reference_lines_load(tmp_path):
    tree = _tree([
        (0, _step("a"), 0.9, "answer", True, None),
        (0, _step("b"), -0.9, "answer", False, None),
    ])
    write_trees(tmp_path / "trees.jsonl", [tree, tree])
    n_sft, n_ppm = sel.select_to_files([tmp_path / "trees.jsonl"], tmp_path / "sft.jsonl", tmp_path / "ppm.jsonl")
    assert (n_sft, n_ppm) == (2, 2)
    assert sel.read_sft(tmp_path / "sft.jsonl") == [sel.SFTExample(tree.question, _step("a"))] * 2
    assert sel.read_ppm(tmp_path / "ppm.jsonl")[0] == sel.PPMPair(build_prompt(tree.question), _step("a"), _step("b"))
    # the reference's released files carry extra fields and may omit the counts
    (tmp_path / "ref.jsonl").write_text(json.dumps({"prompt": "p", "pos": "a", "neg": "b", "extra": 1}) + "\n")
    assert sel.read_ppm(tmp_path / "ref.jsonl") == [sel.PPMPair("p", "a", "b", 1, 1)]


@pytest.mark.parametrize("line, reader, message", [
    ({"query": "q"}, sel.read_sft, "bad.jsonl:2: missing field 'response'"),
    ({"query": 3, "response": "r"}, sel.read_sft, "bad.jsonl:2: field 'query' must be str"),
    ({"prompt": "p", "pos": "a"}, sel.read_ppm, "bad.jsonl:2: missing field 'neg'"),
    ({"prompt": "p", "pos": "a", "neg": "b", "pos_count": 0}, sel.read_ppm, "bad.jsonl:2: field 'pos_count'"),
    ({"prompt": "p", "pos": "a", "neg": "b", "neg_count": "2"}, sel.read_ppm, "bad.jsonl:2: field 'neg_count'"),
])
def test_malformed_lines_name_file_line_and_field(tmp_path, line, reader, message):
    good = {"query": "q", "response": "r", "prompt": "p", "pos": "a", "neg": "b"}
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(InputError, match=message):
        reader(path)

"""The LM policy end to end with a tiny random Qwen2: decode -> execute -> grade -> backup, batched."""
import json

import numpy as np
import pytest

from rstar_jax.data import toyworld
from rstar_jax.mcts import FinishRequest, StepRequest
from rstar_jax.generate import PrefixCache, PrefixKV
from rstar_jax.mcts.lm_policy import LMPolicy
from rstar_jax.mcts.records import TreeRecord
from rstar_jax.mcts.search import LockstepSearch
from rstar_jax.steps import END_OF_STEP, STOP_STRINGS, stop_kind
from mcts_helpers import make_cfg
from random_policy import tiny_policy


@pytest.fixture(scope="module")
def tiny():
    problems = toyworld.generate_problems(4, seed=0, levels=(1, 2))
    return (*tiny_policy(problems), problems)


def lm_cfg(**kw):
    return make_cfg(**{**dict(rollouts=2, num_children=3, max_step_tokens=32, temperature=1.0, top_p=1.0,
                              errors_threshold=2), **kw})


def test_search_with_a_random_lm_runs_every_stage(tiny, sandbox):
    model, tok, problems = tiny
    cfg = lm_cfg()
    policy = LMPolicy(model, tok, cfg)
    trees = []
    stats = LockstepSearch(policy, cfg, sandbox=sandbox, seed=0, batch=4).run(problems, trees.append)
    assert stats.problems == 4 and stats.tokens_decoded > 0 and stats.programs > 0
    assert policy.counters.calls >= 2 and stats.tokens_prefilled > 0
    for t in trees:
        again = TreeRecord.from_json(json.loads(json.dumps(t.to_json())), "roundtrip")
        for n in again.nodes[1:]:
            kind = stop_kind(n.text)
            if kind is None:
                assert (n.terminal, n.dead_reason, n.visits, n.value_sum) == ("dead", "unparsable", 1, -1.0)
            if n.terminal is None:
                assert kind == "step" and n.visits == 0  # terminal-guided: no terminal below reached it
        # Root visits are exactly the answer terminals backed up (+-1 each); dead ones stay local.
        answers = [n for n in again.nodes if n.terminal == "answer"]
        assert again.nodes[0].visits == len(answers)
        assert again.nodes[0].value_sum == sum(1.0 if n.correct else -1.0 for n in answers)


@pytest.mark.slow
def test_lockstep_equals_alone_with_the_lm(tiny, sandbox):
    model, tok, problems = tiny
    cfg = lm_cfg()
    together = []
    LockstepSearch(LMPolicy(model, tok, cfg), cfg, sandbox=sandbox, seed=3, batch=4).run(problems, together.append)
    for t in together:
        alone = []
        p = next(p for p in problems if p.id == t.problem_id)
        LockstepSearch(LMPolicy(model, tok, cfg), cfg, sandbox=sandbox, seed=3, batch=1).run([p], alone.append)
        assert json.dumps(alone[0].to_json()) == json.dumps(t.to_json())


def test_prefix_sharing_prefills_each_prompt_once(tiny):
    model, tok, problems = tiny
    requests = [StepRequest(p, (), 3, seed=i) for i, p in enumerate(problems[:2])]
    prompt_tokens = sum(len(tok.encode(r.prompt)) for r in requests)
    shared = LMPolicy(model, tok, lm_cfg(share_prefix=True))
    out = shared.propose(requests)
    assert [len(c) for c in out] == [3, 3] and shared.counters.prefill_tokens == prompt_tokens
    assert shared.counters.calls == 1 and shared.counters.sequences == 6
    copies = LMPolicy(model, tok, lm_cfg(share_prefix=False))
    out2 = copies.propose(requests)
    assert [len(c) for c in out2] == [3, 3] and copies.counters.prefill_tokens == 3 * prompt_tokens
    # Candidates stop at (and keep) a step marker, or run to the token limit without one.
    for text in sum(out + out2, []):
        assert stop_kind(text) is not None or not any(s in text for s in STOP_STRINGS)


def test_prefix_cache_search_gives_the_same_trees(tiny, sandbox):
    model, tok, problems = tiny
    trees = {}
    for mb in (0, 64):
        cfg = lm_cfg(prefix_cache_mb=mb, rollouts=3)
        out = []
        LockstepSearch(LMPolicy(model, tok, cfg), cfg, sandbox=sandbox, seed=1, batch=4).run(problems, out.append)
        trees[mb] = sorted(json.dumps(t.to_json()) for t in out)
    assert trees[64] == trees[0]


def test_prefix_cache_continues_known_paths_without_a_prefill(tiny):
    model, tok, problems = tiny
    cfg = lm_cfg(prefix_cache_mb=64, max_step_tokens=8)
    roots = [StepRequest(p, (), 64, seed=i) for i, p in enumerate(problems)]
    cached = LMPolicy(model, tok, cfg)
    cached.propose(roots)
    for text, (ids, kv) in cached.cache._items.items():
        assert tok.encode(text) == ids and kv.length == len(ids)
    prompts = {r.prompt: r.problem for r in roots}
    # The random model now and then closes a step whose text encodes back to its tokens (seeded: here one).
    children = [StepRequest(prompts[root], (text[len(root):],), 3, seed=5)
                for text in cached.cache._items for root in prompts
                if text != root and text.startswith(root) and text.endswith(END_OF_STEP)]
    assert children
    requests = [StepRequest(r.problem, (), 3, seed=r.seed) for r in roots[:2]] + children
    prefilled = cached.counters.prefill_tokens
    got = cached.propose(requests)
    assert cached.counters.prefill_tokens == prefilled and cached.counters.cached_prompts == len(requests)
    assert got == LMPolicy(model, tok, lm_cfg(max_step_tokens=8)).propose(requests)


def test_finish_prefills_only_the_output_after_a_cached_final_step(tiny):
    model, tok, problems = tiny
    steps = ("<code>\n# Step 1: start\nx = 7\n<end_of_step>",)
    reqs = [FinishRequest(p, steps, "\n# Now print the final answer\nprint(x)\n<end_of_code><output>7\n<end_of_output>",
                          seed=i) for i, p in enumerate(problems)]
    cached = LMPolicy(model, tok, lm_cfg(prefix_cache_mb=64, max_step_tokens=12))
    # The search samples a final step up to <end_of_code> and caches it; here three of four are known.
    code_ids = tok.encode_batch([r.code_prompt for r in reqs[:3]])
    for r, ids, kv in zip(reqs, code_ids, cached.generator._prompt_kv(code_ids)):
        cached.cache.put(r.code_prompt, ids, kv)
    got = cached.finish(reqs)
    full = [len(x) for x in tok.encode_batch([r.prompt for r in reqs])]
    assert all(r.prompt.startswith(r.code_prompt) and r.code_prompt.endswith("<end_of_code>") for r in reqs)
    assert cached.counters.cached_prompts == 3
    assert cached.counters.prefill_tokens == sum(full) - sum(len(x) for x in code_ids)  # outputs + the unknown one
    assert got == LMPolicy(model, tok, lm_cfg(max_step_tokens=12)).finish(reqs)
    assert len(set(got)) > 1                                     # real samples, not one text repeated


def test_prefix_cache_drops_the_least_recently_used_past_its_budget():
    def kv(tokens):
        return PrefixKV((np.zeros((1, tokens, 4), np.float32),), (np.zeros((1, tokens, 4), np.float32),),
                        np.zeros(8, np.float32))

    size = kv(2).nbytes
    cache = PrefixCache(3 * size)
    for name in "abc":
        cache.put(name, [1, 2], kv(2))
    assert cache.get("a") is not None  # now the most recent
    cache.put("d", [1, 2], kv(2))
    assert cache.get("b") is None and all(cache.get(x) is not None for x in "acd")
    assert len(cache) == 3 and cache.bytes == 3 * size
    cache.put("huge", [1] * 100, kv(100))  # larger than the whole budget: not kept, nothing evicted for it
    assert cache.get("huge") is None and len(cache) == 3

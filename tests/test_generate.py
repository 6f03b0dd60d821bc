"""The sampling engine: greedy parity with transformers, sampling statistics, seeds, stop strings,
shared prefill, continuing known prefixes, compile bounds, mesh placement."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "models"))
from hf_tiny import hf_model, jit_call, save  # noqa: E402

from rstar_jax import generate as gen  # noqa: E402
from rstar_jax import sharding  # noqa: E402
from rstar_jax.models import Qwen2Config, init_model, load_hf  # noqa: E402

PROMPTS = [[5, 6, 7], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18], [100, 200]]
SP = [[t % 40 for t in p] for p in PROMPTS]  # the same prompts for the 40-token model
SMALL = Qwen2Config(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, vocab_pad_multiple=8)


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    hf = hf_model(vocab=997)
    return hf, load_hf(save(hf, tmp_path_factory.mktemp("hf")))


@pytest.fixture(scope="module")
def small():
    return init_model(SMALL, seed=11)


def test_greedy_matches_transformers_with_mixed_lengths(pair):
    hf, model = pair
    out = gen.generate_tokens(model, PROMPTS, 12)
    ref = []
    for p in PROMPTS:
        g = hf.generate(torch.tensor([p]), max_new_tokens=12, do_sample=False, pad_token_id=0)
        ref.append(g[0, len(p):].tolist())
    assert out == ref
    # a stop token cuts each row at (and including) its first occurrence
    stop = ref[0][3]
    cut = gen.generate_tokens(model, PROMPTS, 12, stop_token_ids=[stop])
    for got, full in zip(cut, ref):
        want = full[: full.index(stop) + 1] if stop in full else full
        assert got == want


def test_logprob_is_the_models_log_probability(pair):
    _, model = pair
    (c,) = gen.Generator(model).generate([PROMPTS[0]], 6, temperature=1.0, seed=3)
    seq = jnp.asarray([PROMPTS[0] + c.tokens])
    logp = jax.nn.log_softmax(jit_call(model, seq)[0], axis=-1)
    p = len(PROMPTS[0])
    want = sum(float(logp[p - 1 + i, t]) for i, t in enumerate(c.tokens))
    assert c.logprob == pytest.approx(want, abs=1e-3)
    assert c.prompt_tokens == 3 and c.new_tokens == 6 and c.stop_reason == gen.LENGTH


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    stat = float(((counts - expected) ** 2 / expected).sum())
    return float(jax.scipy.special.gammaincc((len(counts) - 1) / 2, stat / 2))


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.5, 0, 1.0), (1.0, 10, 1.0), (2.0, 0, 0.8), (1.0, 12, 0.9)])
def test_first_token_frequencies_follow_masked_softmax(small, temperature, top_k, top_p):
    prompt = [3, 1, 4, 1, 5]
    draws = 4000
    out = gen.generate_tokens(small, [prompt], 1, temperature=temperature, top_k=top_k, top_p=top_p, n=draws, seed=5)
    counts = np.bincount([o[0] for o in out], minlength=SMALL.vocab_size).astype(np.float64)
    logits = np.asarray(jit_call(small, jnp.asarray([prompt])))[0, -1].astype(np.float64) / temperature
    order = np.argsort(-logits)
    keep = np.zeros_like(logits, bool)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    k = top_k or len(logits)
    kept_p = probs[order[:k]] / probs[order[:k]].sum()
    m = int(np.searchsorted(np.cumsum(kept_p), top_p) + 1) if top_p < 1 else k
    keep[order[: min(k, m)]] = True
    assert counts[~keep].sum() == 0, "a masked token was sampled"
    target = np.where(keep, probs, 0)
    target /= target.sum()
    # merge tokens with small expected counts so the chi-square approximation holds
    big = keep & (target * draws >= 5)
    c = np.append(counts[big], counts[keep & ~big].sum())
    t = np.append(target[big], target[keep & ~big].sum())
    if t[-1] == 0:
        c, t = c[:-1], t[:-1]
    assert len(c) >= 3
    assert _chi2_pvalue(c, t) > 1e-3


def test_seeds_are_deterministic_and_independent_of_the_batch(small):
    kw = dict(temperature=1.0, top_p=0.95, seed=7)
    alone = gen.generate_tokens(small, [SP[0]], 10, n=2, **kw)
    again = gen.generate_tokens(small, [SP[0]], 10, n=2, **kw)
    crowd = gen.generate_tokens(small, [[9] * 20, SP[0], [1, 2]], 10, n=2, **kw)
    other_seed = gen.generate_tokens(small, [SP[0]], 10, n=2, temperature=1.0, top_p=0.95, seed=8)
    assert alone == again == crowd[2:4]
    assert alone != other_seed and alone[0] != alone[1]
    # per-prompt seeds through the rich API: a prompt's samples follow its own seed only
    g = gen.Generator(small)
    a = g.generate([SP[0], SP[2]], 8, temperature=1.0, top_p=0.95, seeds=[7, 123])
    b = g.generate([SP[2]], 8, temperature=1.0, top_p=0.95, seeds=[123])
    assert a[1].tokens == b[0].tokens and a[0].tokens == alone[0][:8]


def test_shared_prefill_equals_repeated_prompt(small):
    shared = gen.generate_tokens(small, [SP[1]], 9, n=3)
    repeated = gen.generate_tokens(small, [SP[1]] * 3, 9)
    assert shared == repeated
    three = gen.generate_tokens(small, [SP[1]], 9, n=3, temperature=1.0, seed=2)
    five = gen.generate_tokens(small, [SP[1]], 9, n=5, temperature=1.0, seed=2)
    assert three == five[:3]  # sample j is the same stream whatever n is


def test_extending_known_prefixes_equals_generating_from_their_ids(small):
    g = gen.Generator(small)
    stops = list(range(1, SMALL.vocab_size, 3))  # a random model stops within a few tokens
    for temperature in (0.0, 1.0):
        kw = dict(n=2, temperature=temperature, stop_token_ids=stops, seeds=[1, 2, 3])
        ref = g.generate(SP, 12, **kw)
        fresh, kvs = g.generate_extending(SP, [None] * 3, 12, **kw)
        assert [c.tokens for c in fresh] == [c.tokens for c in ref]
        assert [c.logprob for c in fresh] == pytest.approx([c.logprob for c in ref], abs=1e-4)
        assert [kv.length for kv in kvs] == [len(p) for p in SP]
        mixed, _ = g.generate_extending([None, SP[1], None], [kvs[0], None, kvs[2]], 12, **kw)
        assert [c.tokens for c in mixed] == [c.tokens for c in ref]
        # A completion that ended on a stop token carries its keys/values and what follows it: prompt +
        # completion continues exactly as generating from the concatenated ids does.
        ended = [(i, c) for i, c in enumerate(fresh) if c.stop_reason == gen.STOP_TOKEN]
        assert ended and all(c.kv.length == len(c.tokens) for _, c in ended)
        assert all(c.kv is None for c in fresh if c.stop_reason != gen.STOP_TOKEN)
        seeds = list(range(len(ended)))
        direct = g.generate([SP[i // 2] + c.tokens for i, c in ended], 10, temperature=temperature,
                            stop_token_ids=stops, seeds=seeds)
        cont, _ = g.generate_extending([None] * len(ended), [kvs[i // 2].extend(c.kv) for i, c in ended], 10,
                                       temperature=temperature, stop_token_ids=stops, seeds=seeds)
        assert [c.tokens for c in cont] == [c.tokens for c in direct]
        assert [c.logprob for c in cont] == pytest.approx([c.logprob for c in direct], abs=1e-4)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        g.generate_extending([None], [None], 4)


def test_extend_kv_equals_prefilling_the_whole_prompt(small):
    g = gen.Generator(small)
    whole = g._prompt_kv(SP)
    cuts = [1, len(SP[1]) // 2, len(SP[2]) - 1]                 # tails of different lengths, one a single token
    ext = g.extend_kv(g._prompt_kv([p[:c] for p, c in zip(SP, cuts)]), [p[c:] for p, c in zip(SP, cuts)])
    for a, b in zip(ext, whole):
        assert a.length == b.length
        np.testing.assert_allclose(a.logits, b.logits, atol=1e-4)
        for x, y in zip(a.k + a.v, b.k + b.v):
            np.testing.assert_allclose(x, y, atol=1e-5)
    shifted = g.extend_kv(g._prompt_kv([SP[0][:1]]), [SP[0][2:]])  # a token missing: must not match
    assert not np.allclose(shifted[0].logits, whole[0].logits, atol=1e-3)
    with pytest.raises(ValueError, match="non-empty"):
        g.extend_kv(whole[:1], [[]])


def test_stop_strings_spanning_tokens_stop_at_the_right_place(small):
    table = {t: f"<{t:02d}>" for t in range(SMALL.vocab_size)}
    decode = lambda ids: "".join(table[t] for t in ids)
    g = gen.Generator(small, stop_check_every=4)
    (full,) = g.generate([SP[0]], 24, decode=decode)
    assert full.stop_reason == gen.LENGTH and full.text == decode(full.tokens)
    k = 9  # stop string = end of token k + start of token k+1 (starts and ends mid-token)
    stop = table[full.tokens[k]][-2:] + table[full.tokens[k + 1]][:2]
    first = decode(full.tokens).find(stop)
    (c,) = g.generate([SP[0]], 24, decode=decode, stop_strings=["never", stop])
    assert c.stop_reason == gen.STOP_STRING
    assert c.text == decode(full.tokens)[: first + len(stop)]
    n_tok = next(i for i in range(1, 25) if stop in decode(full.tokens[:i]))
    assert c.tokens == full.tokens[:n_tok]
    assert c.logprob == pytest.approx(
        g.generate([SP[0]], n_tok, temperature=0.0, decode=decode)[0].logprob, abs=1e-4)
    with pytest.raises(ValueError, match="decode"):
        g.generate([SP[0]], 4, stop_strings=["x"])


def test_compiles_stay_within_the_bucket_bound(small):
    g = gen.Generator(small)
    before = len(gen.COMPILES)
    seen = set()
    for length in range(1, 41, 3):
        for max_new in (3, 9, 17):
            prompt = [(7 * i) % SMALL.vocab_size for i in range(length)]
            g.generate([prompt], max_new)
            seen.add((gen.bucket(length), gen.bucket(max_new)))
    # prompt buckets {16, 32, 64} x new-token buckets {16, 32}: one prefill + one decode each
    assert len(gen.COMPILES) - before <= 2 * len(seen) == 12


def test_a_shrinking_batch_reuses_a_compiled_row_bucket_with_the_same_results(small):
    prompts = [[(5 * i + j) % (SMALL.vocab_size - 1) + 1 for i in range(11)] for j in range(8)]
    kw = dict(temperature=1.0, seeds=list(range(8)))
    full = gen.Generator(small).generate(prompts, 8, **kw)  # 8 rows: compiles (or reuses) the 8-row bucket
    before = len(gen.COMPILES)
    few = gen.Generator(small).generate(prompts[:6], 8, temperature=1.0, seeds=list(range(6)))
    assert len(gen.COMPILES) == before  # 6 rows run padded to 8 (<= ROW_REUSE x 6) instead of compiling 6
    assert [c.tokens for c in few] == [c.tokens for c in full[:6]]
    assert gen.row_bucket(1, ("fresh shape",)) == 1 and gen.row_bucket(1, ("fresh shape",)) == 1
    assert gen.row_bucket(5, ("fresh shape",)) == 6 and gen.row_bucket(4, ("fresh shape",)) == 6  # 6 <= 1.5 x 4
    assert gen.row_bucket(3, ("fresh shape",)) == 3  # 6 > 1.5 x 3: its own bucket
    assert [gen.row_grid(n) for n in (1, 2, 3, 4, 5, 6, 7, 9, 13, 17, 25, 33, 97)] == [1, 2, 3, 4, 6, 6, 8, 12, 16,
                                                                                       24, 32, 48, 128]


def test_mesh_generation_equals_single_device(small):
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    plain = gen.generate_tokens(small, SP, 6, n=2, temperature=1.0, seed=4)
    g = gen.Generator(small, mesh=mesh)
    w = nnx.to_flat_state(g.state)
    assert any(len(v.get_value().sharding.device_set) == 8 and v.get_value().sharding.spec != jax.sharding.PartitionSpec()
               for _, v in w)
    assert [c.tokens for c in g.generate(SP, 6, n=2, temperature=1.0, seed=4)] == plain


def test_bad_requests_name_the_problem(small):
    g = gen.Generator(small)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        g.generate([[1], []], 4)
    with pytest.raises(ValueError, match="token id 99"):
        g.generate([[1, 99]], 4)
    with pytest.raises(ValueError, match="top_p"):
        g.generate([[1]], 4, top_p=0.0)

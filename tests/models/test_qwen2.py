"""Logits parity of our Qwen2 with transformers, and agreement of the cache path with the whole-sequence path."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from hf_tiny import hf_logits, hf_model, jit_call, save

from rstar_jax.models import Qwen2Config, functional, init_model, load_hf, qwen2, step_score


def cached_fn(model):
    fn, state = functional(model, "forward_cached")
    jitted = jax.jit(fn, static_argnames="last_only")
    return lambda *a, **k: jitted(state, *a, **k)

CASES = [  # (kv_heads, tied, theta, vocab)
    (2, False, 10000.0, 1000),
    (4, True, 10000.0, 1000),
    (2, True, 1_000_000.0, 997),
    (4, False, 500.0, 997),
]


@pytest.mark.parametrize("kv_heads,tied,theta,vocab", CASES)
def test_logits_match_transformers_fp32(tmp_path, kv_heads, tied, theta, vocab):
    hf = hf_model(vocab=vocab, kv_heads=kv_heads, tied=tied, theta=theta)
    model = load_hf(save(hf, tmp_path))
    assert model.config.num_key_value_heads == kv_heads and model.config.rope_theta == theta
    ids = np.random.RandomState(1).randint(0, vocab, (3, 17))
    ours = np.asarray(jit_call(model, jnp.asarray(ids, jnp.int32)))
    assert ours.shape == (3, 17, vocab) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_legacy_top_level_rope_theta(tmp_path):
    import json
    hf = hf_model(theta=777.0)
    path = save(hf, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg.pop("rope_parameters")
    cfg["rope_theta"] = 777.0
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    model = load_hf(path)
    assert model.config.rope_theta == 777.0
    ids = np.arange(24).reshape(2, 12) * 7
    np.testing.assert_allclose(np.asarray(jit_call(model, jnp.asarray(ids))), hf_logits(hf, ids), atol=1e-4, rtol=0)


def test_bf16_compute_within_measured_tolerance(tmp_path):
    # Measured on this config (3 seeds): max |dlogit| 0.004-0.0053 with |logits| up to ~0.69, every
    # argmax equal. 0.03 leaves ~6x headroom; real bugs show up as differences of the logits' own scale.
    hf = hf_model()
    model = load_hf(save(hf, tmp_path), compute_dtype=jnp.bfloat16)
    ids = np.random.RandomState(2).randint(0, 1000, (2, 16))
    ours = np.asarray(jit_call(model, jnp.asarray(ids)))
    ref = hf_logits(hf, ids)
    err = np.abs(ours - ref).max()
    assert err < 0.03, err
    assert (ours.argmax(-1) == ref.argmax(-1)).mean() > 0.9


def test_padding_masks_match_transformers(tmp_path):
    """Left-padded rows through the cache path equal HF with an attention mask; right-padded rows
    via segment ids equal the unpadded sequences."""
    hf = hf_model()
    model = load_hf(save(hf, tmp_path))
    rs = np.random.RandomState(3)
    lens = [5, 11, 8]
    t = max(lens)
    ids = np.zeros((3, t), np.int64)
    mask = np.zeros((3, t), np.int64)
    for b, n in enumerate(lens):
        ids[b, t - n:] = rs.randint(1, 1000, n)
        mask[b, t - n:] = 1
    positions = np.where(mask > 0, np.cumsum(mask, 1) - 1, -1)
    cache = model.init_cache(3, t + 4)
    logits, cache = cached_fn(model)(jnp.asarray(ids), jnp.asarray(positions), cache, 0)
    ref = hf_logits(hf, ids, mask)
    np.testing.assert_allclose(np.asarray(logits)[mask > 0], ref[mask > 0], atol=1e-4, rtol=0)
    # right padding with segment ids: every row's real tokens equal the row run alone
    right = np.zeros((3, t), np.int64)
    seg = np.zeros((3, t), np.int32)
    for b, n in enumerate(lens):
        right[b, :n] = ids[b, t - n:]
        seg[b, :n] = 1
    out = np.asarray(jit_call(model, jnp.asarray(right), segment_ids=jnp.asarray(seg)))
    for b, n in enumerate(lens):
        np.testing.assert_allclose(out[b, :n], hf_logits(hf, right[b:b + 1, :n])[0], atol=1e-4, rtol=0)


def test_cached_decode_equals_whole_sequence():
    cfg = Qwen2Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=1)
    model = init_model(cfg, seed=1)
    ids = jnp.asarray(np.random.RandomState(4).randint(0, 300, (2, 10)), jnp.int32)
    full = np.asarray(jit_call(model, ids))
    cache = model.init_cache(2, 16)
    pos = jnp.broadcast_to(jnp.arange(10), (2, 10))
    fc = cached_fn(model)
    logits, cache = fc(ids[:, :6], pos[:, :6], cache, 0)
    steps = [np.asarray(logits)]
    for i in range(6, 10):  # one token at a time, as the decoder does
        lg, cache = fc(ids[:, i:i + 1], pos[:, i:i + 1], cache, i, last_only=True)
        steps.append(np.asarray(lg)[:, None])
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5, rtol=0)


def test_packed_segments_are_independent():
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    model = init_model(cfg, seed=2)
    a, b = jnp.arange(1, 6)[None], jnp.arange(10, 14)[None]
    packed = jnp.concatenate([a, b], 1)
    seg = jnp.asarray([[1] * 5 + [2] * 4])
    pos = jnp.asarray([list(range(5)) + list(range(4))])
    out = np.asarray(jit_call(model, packed, positions=pos, segment_ids=seg))
    np.testing.assert_allclose(out[0, 5:], np.asarray(jit_call(model, b))[0], atol=1e-5)
    np.testing.assert_allclose(out[0, :5], np.asarray(jit_call(model, a))[0], atol=1e-5)


@pytest.mark.parametrize("t", [64, 130, 200, 1000])
def test_causal_blocks_equal_the_whole_score_matrix(t):
    """Blocked causal attention (queries score only keys up to their block's end) equals `attend` over the
    whole matrix, with packed segments that cross block boundaries and a padded tail."""
    assert qwen2.causal_blocks(t) == min(8, t // 64)
    rs = np.random.RandomState(t)
    q, k, v = (jnp.asarray(rs.normal(size=(2, t, h, 8)), jnp.float32) for h in (4, 2, 2))
    seg = np.zeros((2, t), np.int32)
    seg[0, : t // 3], seg[0, t // 3: t - 5] = 1, 2
    seg[1] = 1 + np.arange(t) // 50
    same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, None, :] > 0)
    visible = jnp.asarray(np.tril(np.ones((t, t), bool))[None] & same)
    real = seg > 0  # padding queries see no key; their output is never read
    np.testing.assert_allclose(np.asarray(qwen2.attend_causal(q, k, v, visible))[real],
                               np.asarray(qwen2.attend(q, k, v, visible))[real], atol=1e-5, rtol=0)


def test_logits_match_transformers_over_several_attention_blocks(tmp_path):
    hf = hf_model()
    model = load_hf(save(hf, tmp_path))
    ids = np.random.RandomState(5).randint(0, 1000, (2, 150))  # 2 query blocks of 75
    np.testing.assert_allclose(np.asarray(jit_call(model, jnp.asarray(ids, jnp.int32))), hf_logits(hf, ids),
                               atol=1e-4, rtol=0)


def test_ppm_reads_last_real_token_and_scores():
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1)
    ppm = init_model(cfg, seed=3, ppm=True, head_init_std=0.5)
    ids = jnp.asarray([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    r = jit_call(ppm, ids, lengths=jnp.asarray([3, 5]))
    alone = jit_call(ppm, ids[:1, :3])
    assert r.shape == (2,)
    np.testing.assert_allclose(r[0], alone[0], atol=1e-5)
    assert abs(float(r[0] - r[1])) > 1e-4  # a different last token changes the reward
    np.testing.assert_allclose(step_score(r), np.tanh(np.asarray(r) / 5), atol=1e-6)


@pytest.mark.parametrize("tied", [True, False])
def test_logprob_ppm_scores_a_step_by_its_tokens_log_probability(tied):
    """A log-prob head's reward is the policy's summed log-probability of the tokens from `starts` on;
    the cached path (the prefix's last token re-run, the step after it) gives the same step score."""
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=tied)
    policy = init_model(cfg, seed=3)
    ppm = init_model(cfg, seed=3, ppm=True, ppm_head="logprob")  # the same draws: the policy's weights
    ids = jnp.asarray([[5, 6, 7, 8, 9, 0], [5, 6, 7, 8, 9, 10]])
    lengths, starts = jnp.asarray([5, 6]), jnp.asarray([3, 4])
    logp = jax.nn.log_softmax(np.asarray(jit_call(policy, ids), np.float64), axis=-1)
    want = [sum(logp[b, t - 1, int(ids[b, t])] for t in range(int(starts[b]), int(lengths[b]))) for b in range(2)]
    r = jit_call(ppm, ids, lengths=lengths, starts=starts)
    np.testing.assert_allclose(r, want, atol=1e-4)
    # the score is 2 p - 1 of the per-token probability: a whole step's would round to -1 in float32
    np.testing.assert_allclose(nnx.jit(lambda m, i, n, s: m.scores(i, n, s))(ppm, ids, lengths, starts),
                               2 * np.exp(np.asarray(want) / np.asarray(lengths - starts)) - 1, atol=1e-5)
    assert float(step_score(jnp.asarray(-40.0), "logprob", jnp.asarray(30))) > -0.75
    # Cached, as the scorer runs a step after a cached prefix: token 0 in the cache, then token 1 (the
    # prefix's last, re-run for its logits) and the step from column 1 on.
    run = nnx.jit(lambda m, i, p, c, at: m.scores_cached(i, p, c, at, jnp.ones(2, jnp.int32)))
    _, cache = run(ppm, ids[:, :1], jnp.zeros((2, 1), jnp.int32), qwen2.init_cache(cfg, 2, 8, jnp.float32), 0)
    positions = jnp.where(jnp.arange(1, 6)[None] < lengths[:, None], jnp.arange(1, 6)[None], -1)
    got, _ = run(ppm, ids[:, 1:], positions, cache, 1)
    whole = jit_call(ppm, ids, lengths=lengths, starts=jnp.asarray([2, 2]))
    np.testing.assert_allclose(got, step_score(whole, "logprob", lengths - 2), atol=1e-5)


def test_config_rejects_math_we_do_not_implement():
    base = dict(model_type="qwen2", vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=2)
    with pytest.raises(ValueError, match="rope_type"):
        Qwen2Config.from_hf_dict({**base, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})
    with pytest.raises(ValueError, match="sliding"):
        Qwen2Config.from_hf_dict({**base, "use_sliding_window": True})
    with pytest.raises(ValueError, match="missing field.*intermediate_size"):
        Qwen2Config.from_hf_dict({k: v for k, v in base.items() if k != "intermediate_size"})
    cfg = Qwen2Config.from_hf_dict({**base, "rope_theta": 123.0})
    assert cfg.rope_theta == 123.0 and cfg.num_key_value_heads == 2 and cfg.head_dim == 4
    assert Qwen2Config.from_hf_dict(cfg.to_hf_dict()) == cfg

"""The top-k/top-p cut of the sampler: the 32-wide fast path equals a full sort, and a row's draw
does not depend on which path the other rows of its batch needed."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rstar_jax import generate as gen


def reference_mask(logits: np.ndarray, top_k: int, top_p: float) -> np.ndarray:
    """Keep-mask by the definition: sort, keep the top-k, then the smallest prefix reaching top_p."""
    order = np.argsort(-logits, kind="stable")
    k = top_k or len(logits)
    kept = logits[order[:k]].astype(np.float64)
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    before = np.cumsum(probs) - probs
    m = int(np.sum(before < top_p))
    keep = np.zeros(len(logits), bool)
    keep[order[:m]] = True
    return keep


# (top_p = 1 without top-k never reaches the mask: `sample` skips it)
@pytest.mark.parametrize("top_k,top_p", [(0, 0.95), (0, 0.5), (5, 1.0), (40, 0.9), (100, 0.99)])
def test_fast_cut_equals_full_sort(top_k, top_p):
    rng = np.random.default_rng(0)
    # peaked rows (cut inside the 32 best) and flat rows (cut far beyond them: the full sort path)
    scale = np.where(np.arange(48) % 3 == 0, 0.05, 4.0)[:, None]
    logits = (rng.standard_normal((48, 512)) * scale).astype(np.float32)
    rows = len(logits)
    masked = gen.mask_top_k_top_p(jnp.asarray(logits), jnp.full(rows, top_k, jnp.int32), jnp.full(rows, top_p))
    got = np.isfinite(np.asarray(masked))
    for i in range(rows):
        want = reference_mask(logits[i], top_k, top_p)
        # only a token at the exact cut may differ by float rounding of the cumulative sum
        assert (got[i] != want).sum() <= 1, (i, got[i].sum(), want.sum())
        assert got[i][np.argmax(logits[i])]


def test_draws_do_not_depend_on_the_rest_of_the_batch():
    rng = np.random.default_rng(1)
    peaked = (rng.standard_normal((8, 512)) * 4).astype(np.float32)
    flat = (rng.standard_normal((8, 512)) * 0.05).astype(np.float32)  # forces the wide draw for its rows
    keys = jax.random.split(jax.random.PRNGKey(3), 16)
    kw = lambda r: (jnp.full(r, 0.7), jnp.zeros(r, jnp.int32), jnp.full(r, 0.95))
    alone = gen.sample(jnp.asarray(peaked), keys[:8], *kw(8))
    mixed = gen.sample(jnp.asarray(np.concatenate([peaked, flat])), keys, *kw(16))
    assert np.array_equal(np.asarray(alone), np.asarray(mixed)[:8])
    flat_alone = gen.sample(jnp.asarray(flat), keys[8:], *kw(8))
    assert np.array_equal(np.asarray(flat_alone), np.asarray(mixed)[8:])
    # every draw is a kept token
    for logits, toks in ((peaked, alone), (flat, flat_alone)):
        for row, t in zip(logits, np.asarray(toks)):
            assert reference_mask(row / 0.7, 0, 0.95)[t]


def test_smaller_samplers_draw_what_the_full_one_draws():
    """A decode program compiles only the sampler its call needs; each must give the full one's tokens."""
    rng = np.random.default_rng(2)
    logits = jnp.asarray((rng.standard_normal((16, 512)) * 3).astype(np.float32))
    keys = jax.random.split(jax.random.PRNGKey(5), 16)
    off = (jnp.zeros(16, jnp.int32), jnp.ones(16))
    for temperature, sampler in ((0.0, "greedy"), (0.7, "plain"), (1.0, "plain")):
        t = jnp.full(16, temperature)
        assert gen.sampler_for(temperature, 0, 1.0) == sampler
        full = gen.sample(logits, keys, t, *off, "masked")
        assert np.array_equal(np.asarray(gen.sample(logits, keys, t, *off, sampler)), np.asarray(full))
    assert gen.sampler_for(1.0, 5, 1.0) == gen.sampler_for(0.7, 0, 0.9) == "masked"
    assert len(set(np.asarray(gen.sample(logits, keys, jnp.ones(16), *off, "plain")).tolist())) > 1


def test_categorical_follows_softmax_and_never_draws_a_masked_token():
    """The inverse-CDF draw over blocks: 37 tokens (a partial last block), 5 of them masked."""
    rng = np.random.default_rng(3)
    row = (rng.standard_normal(37) * 1.5).astype(np.float32)
    row[[0, 5, 31, 32, 36]] = -np.inf  # first, inside, block edges and the last token
    draws = 40000
    keys = jax.random.split(jax.random.PRNGKey(11), draws)
    toks = np.asarray(gen.categorical(keys, jnp.asarray(np.tile(row, (draws, 1))), block=8))
    counts = np.bincount(toks, minlength=37)
    assert counts[~np.isfinite(row)].sum() == 0
    probs = np.exp(row - row[np.isfinite(row)].max())
    probs /= probs.sum()
    expected = probs * draws
    keep = expected > 0
    stat = float(((counts[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    assert float(jax.scipy.special.gammaincc((keep.sum() - 1) / 2, stat / 2)) > 1e-3
    # a row's draw depends on its own key only
    one = gen.categorical(keys[:3], jnp.asarray(np.tile(row, (3, 1))), block=8)
    assert np.array_equal(np.asarray(one), toks[:3])


def test_first_argmax_and_token_logprob_match_their_definitions():
    logits = np.array([[1.0, 3.0, 3.0, -2.0], [0.5, -1.0, 0.5, 0.25], [-np.inf, -1.0, -3.0, -np.inf]], np.float32)
    assert np.asarray(gen.first_argmax(jnp.asarray(logits))).tolist() == [1, 0, 1]
    tokens = jnp.asarray([2, 3, 2])
    want = np.asarray(jax.nn.log_softmax(jnp.asarray(logits), axis=-1))[np.arange(3), [2, 3, 2]]
    np.testing.assert_allclose(np.asarray(gen.token_logprob(jnp.asarray(logits), tokens)), want, rtol=1e-6)

"""Fresh models, vocabulary growth and the functional split."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hf_tiny import jit_call

from rstar_jax.models import Qwen2Config, functional, init_model, resize_vocab

CFG = Qwen2Config(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=4, num_key_value_heads=2, vocab_pad_multiple=16)


def test_init_is_seeded_and_follows_the_config():
    a, b, c = init_model(CFG, seed=0), init_model(CFG, seed=0), init_model(CFG, seed=1)
    wa = np.asarray(a.model.layers[0].attn.q_w.get_value())
    np.testing.assert_array_equal(wa, np.asarray(b.model.layers[0].attn.q_w.get_value()))
    assert not np.allclose(wa, np.asarray(c.model.layers[0].attn.q_w.get_value()))
    assert wa.std() == pytest.approx(CFG.initializer_range, rel=0.2)
    assert np.all(np.asarray(a.model.norm.get_value()) == 1)
    assert a.model.embed.get_value().shape == (64, 32)  # 50 rows padded to a multiple of 16


@pytest.mark.parametrize("tied", [False, True])
def test_resize_vocab_keeps_old_logits_and_averages_new_rows(tied):
    model = init_model(CFG.replace(tie_word_embeddings=tied), seed=3)
    grown = resize_vocab(model, 70)
    assert grown.config.vocab_size == 70 and grown.model.embed.get_value().shape == (80, 32)
    ids = jnp.asarray([[1, 5, 9, 49]])
    before, after = np.asarray(jit_call(model, ids)), np.asarray(jit_call(grown, ids))
    assert after.shape == (1, 4, 70)
    np.testing.assert_allclose(after[..., :50], before, atol=1e-6)
    emb = np.asarray(grown.model.embed.get_value())
    np.testing.assert_allclose(emb[50:70], np.broadcast_to(emb[:50].mean(0), (20, 32)), atol=1e-6)
    assert np.all(emb[70:] == 0)
    # all new tokens share one head column, so their logits are equal at every position
    np.testing.assert_allclose(after[..., 50:], np.broadcast_to(after[..., 50:51], after[..., 50:].shape), atol=1e-5)
    with pytest.raises(ValueError, match="shrink"):
        resize_vocab(model, 10)


def test_functional_split_matches_module_call():
    model = init_model(CFG, seed=4)
    fn, state = functional(model)
    ids = jnp.asarray([[3, 4, 5]])
    np.testing.assert_array_equal(np.asarray(jax.jit(fn)(state, ids)), np.asarray(jit_call(model, ids)))

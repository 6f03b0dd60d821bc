"""A tiny random Qwen2 policy with a demo tokenizer trained on the given toy problems (shared by tests)."""
import numpy as np

from rstar_jax.data import toyworld
from rstar_jax.models import Qwen2Config, init_model
from rstar_jax.tokenizer import train_demo_tokenizer


def tiny_policy(problems, vocab_size: int = 300):
    """(model, tokenizer): a random 1-layer Qwen2 over a small demo vocabulary (step markers are ~1% of draws)."""
    tok = train_demo_tokenizer(toyworld.tokenizer_corpus(problems, np.random.default_rng(0)), vocab_size)
    cfg = Qwen2Config(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=1024)
    return init_model(cfg, seed=0), tok

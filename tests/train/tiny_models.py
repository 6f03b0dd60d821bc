"""Tiny real Qwen2 policies (rstar_jax.models) for the trainer tests: fast on CPU, sharded
by the logical-axis rules like the full-size ones."""
from rstar_jax.models import Qwen2Config, init_model


def tiny_config(vocab: int) -> Qwen2Config:
    return Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                       vocab_pad_multiple=8)


def TinyLM(vocab: int, *, seed: int = 0):  # noqa: N802 (reads like the model class it builds)
    return init_model(tiny_config(vocab), seed=seed)


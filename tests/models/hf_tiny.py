"""Tiny random transformers Qwen2 models: the reference our JAX models are checked against."""
import numpy as np
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM


def hf_model(vocab=1000, hidden=64, layers=2, heads=4, kv_heads=2, inter=96, theta=10000.0, tied=False, seed=0):
    """A random Qwen2ForCausalLM in eval mode with non-zero q/k/v biases (HF initialises them to 0,
    which would leave the bias path untested)."""
    torch.manual_seed(seed)
    kw = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, tie_word_embeddings=tied,
              max_position_embeddings=512)
    cfg = Qwen2Config(**kw, rope_parameters={"rope_type": "default", "rope_theta": theta})
    model = Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, ids: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    with torch.no_grad():
        kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
        return model(torch.tensor(ids), **kw).logits.float().numpy()


def save(model, path, max_shard_size=None) -> str:
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.save_pretrained(str(path), **kw)
    return str(path)


def jit_call(model, *args, **kw):
    """One compiled forward (eager op-by-op dispatch costs seconds of per-op compiles on CPU)."""
    import jax
    from flax import nnx
    graphdef, state = nnx.split(model)
    return jax.jit(lambda s, *a, **k: nnx.merge(graphdef, s)(*a, **k))(state, *args, **kw)

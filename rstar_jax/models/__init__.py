"""Qwen2 policy and PPM in flax.nnx, HF checkpoint import/export, model construction helpers."""
from rstar_jax.models.build import functional, init_model, place_state, ppm_from_policy, resize_vocab
from rstar_jax.models.checkpoint import load_hf, load_hf_ppm, read_config, save_hf
from rstar_jax.models.config import Qwen2Config
from rstar_jax.models.qwen2 import KVCache, Qwen2ForCausalLM, Qwen2PPM, init_cache, step_score

__all__ = [
    "KVCache", "Qwen2Config", "Qwen2ForCausalLM", "Qwen2PPM", "functional", "init_cache", "init_model",
    "load_hf", "load_hf_ppm", "place_state", "ppm_from_policy", "read_config", "resize_vocab", "save_hf",
    "step_score",
]

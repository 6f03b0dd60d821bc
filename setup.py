"""rstar_jax: the rStar-Math self-evolution loop, JAX-first."""
from setuptools import find_packages, setup

setup(
    name="rstar_jax",
    version="0.1.0",
    description="rStar-Math self-evolution (MCTS + process preference model) in JAX/Flax",
    packages=find_packages(include=["rstar_jax", "rstar_jax.*", "configs"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.8",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "ml-collections>=1.0",
        "absl-py>=2.1",
        "etils[epath]>=1.7",
        "tokenizers>=0.21",
        "safetensors>=0.5",
        "math-verify>=0.8",
        "numpy>=1.26",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        "test": ["pytest>=8", "torch==2.13.0", "transformers>=4.51"],
        "cuda": ["jax[cuda12]"],
        "tpu": ["jax[tpu]"],
    },
)

"""rstar_jax: the rStar-Math self-evolution loop (search, verify, select, train) in JAX/Flax."""

__version__ = "0.1.0"

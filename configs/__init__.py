"""ml_collections configs; `python -m rstar_jax.launch --config=NAME` resolves configs/NAME.py."""

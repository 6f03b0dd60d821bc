"""Trainers: policy SFT (sft.py) and the process preference model (ppm.py) over a shared jitted core (trainer.py)."""

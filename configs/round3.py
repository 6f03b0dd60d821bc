"""Round 3 of rStar-Math self-evolution (DESIGN.md "Rounds"); see configs/_rounds.py for the paths to give."""
from configs._rounds import get_round_config


def get_config():
    return get_round_config(3)

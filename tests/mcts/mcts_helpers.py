"""Helpers shared by the search tests: a small config and problems."""
from configs.base import mcts_config
from rstar_jax.data.problems import Problem


def make_cfg(**overrides):
    cfg = mcts_config()
    cfg.batch_trees = 4
    cfg.max_nodes = 64
    cfg.flush_every = 2
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


def problem(pid, answer="5", question="What is 2 + 3?"):
    return Problem(id=str(pid), question=question, answer=answer, level=None, source="test")

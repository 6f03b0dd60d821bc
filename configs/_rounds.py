"""Shared settings of the round1..round4 configs: Qwen2.5-Math-7B on a TPU pod (or GPU hosts).

Paths are overrides: --config.problems, --config.eval_problems, --config.base_checkpoint (Qwen2.5-Math-7B),
--config.init_checkpoint (round 1's bootstrap policy), and for a round run in a fresh workdir
--config.policy_checkpoint / --config.ppm_checkpoint (the previous round's exports).
"""
from configs import base


def get_round_config(r: int):
    """The config that runs round `r` alone; earlier rounds' exports are read from the same workdir."""
    config = base.get_config()
    config.stage = "evolve"
    config.first_round = config.last_round = r
    config.model.param_dtype = "bfloat16"  # inference weights; trainers keep fp32 master copies
    config.model.dtype = "bfloat16"
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, -1, 1
    config.mcts.batch_trees = 256  # trees in lockstep per host: B x n = 3072 sequences per iteration
    # Two groups of 128 trees take turns, so the host's sandbox runs one group's programs while the
    # accelerator decodes the other's steps (1536 sequences per call). Same trees as one group; the overlap
    # is measured only on CPU with the sandbox on its own core (README), not yet on an accelerator.
    config.mcts.pipeline_groups = 2
    config.mcts.max_step_tokens = 512
    config.mcts.max_nodes = 1024
    config.train.seq_len = 4096
    config.train.micro_batch_size = 16
    config.ppm_train.seq_len = 2048
    config.ppm_train.micro_batch_size = 32
    config.sandbox.workers = 0  # one per host core
    config.eval.samples = 8
    return config

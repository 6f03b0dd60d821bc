"""Evaluate a policy (and PPM) checkpoint: `--config.init_checkpoint=POLICY --config.ppm_checkpoint=PPM
--config.eval_problems=FILE.jsonl`; greedy, majority vote, best-of-N by PPM and MCTS + PPM (paper's
inference settings in `config.eval`). Writes `WORKDIR/eval.json`."""
from configs._rounds import get_round_config


def get_config():
    config = get_round_config(4)
    config.stage = "eval"
    return config

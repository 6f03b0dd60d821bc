"""Policy SFT stage: `python -m rstar_jax.launch --config=sft --workdir=W --config.init_checkpoint=HF_DIR
--config.sft_data=FILE.jsonl` fine-tunes the checkpoint on `{"query", "response"}` lines and writes
`W/export/` (HF format). Hyper-parameters live in `config.train` (e.g. `--config.train.learning_rate`)."""
from configs import base


def get_config():
    config = base.get_config()
    config.stage = "sft"
    config.sft_data = ""  # jsonl of {"query", "response"} (data selection's output, or the reference's)
    return config

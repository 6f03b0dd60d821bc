"""PPM stage: `python -m rstar_jax.launch --config=ppm --workdir=W --config.init_checkpoint=HF_DIR
--config.ppm_data=FILE.jsonl` trains a process preference model, initialised from the checkpoint (the
SFT policy) with a fresh value head, on `{"prompt", "pos", "neg", "pos_count", "neg_count"}` lines and
writes `W/export/` (HF format). Hyper-parameters live in `config.ppm_train`."""
from configs import base


def get_config():
    config = base.get_config()
    config.stage = "ppm"
    config.ppm_data = ""  # jsonl of preference pairs (data selection's output, or the reference's)
    return config

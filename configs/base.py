"""Shared defaults. Every named config starts from `get_config()` and changes what it needs.

Each section has its own function so that the code that reads it owns it in one place.
Values follow the rStar-Math reference (DESIGN.md) unless a comment says why not.
"""
from ml_collections import config_dict


def model_config() -> config_dict.ConfigDict:
    """Which checkpoint and numerics. `init_checkpoint` is an HF directory (config.json + safetensors)."""
    return config_dict.ConfigDict(
        {
            "param_dtype": "float32",  # master weights
            "dtype": "bfloat16",  # compute dtype; fp32 on CPU configs
        }
    )


def mesh_config() -> config_dict.ConfigDict:
    """Device mesh sizes; -1 means "all remaining devices"."""
    return config_dict.ConfigDict({"data": 1, "fsdp": -1, "tensor": 1})


def train_config() -> config_dict.ConfigDict:
    """Policy SFT hyper-parameters (reference: lr 7e-6, 2 epochs, batch 128). Read by rstar_jax.train.sft;
    the PPM section starts from the same fields."""
    return config_dict.ConfigDict(
        {
            "learning_rate": 7e-6,
            "epochs": 2,
            "batch_size": 128,  # global rows per optimizer step (SFT: packed rows of seq_len; PPM: pairs)
            "micro_batch_size": 0,  # rows per forward/backward (gradient accumulation); 0 = the whole batch
            "seq_len": 2048,
            "schedule": "cosine",  # cosine | linear | constant, after linear warmup
            "warmup_ratio": 0.03,  # fraction of the steps spent warming up from 0
            "end_lr_ratio": 0.0,  # final learning rate as a fraction of the peak
            "weight_decay": 0.0,  # AdamW decoupled weight decay
            "adam_b1": 0.9,
            "adam_b2": 0.999,
            "adam_eps": 1e-8,
            "max_grad_norm": 1.0,  # global-norm clipping; 0 = off
            "eval_fraction": 0.02,  # seeded held-out share of the data (0 = no eval)
            "eval_every": 0,  # steps between held-out evaluations; 0 = only at the end
            "log_every": 10,  # steps between metric fetches (TensorBoard, stdout, progress bar)
            "checkpoint_every": 200,  # steps between orbax checkpoints (the last step is always saved)
            "keep_checkpoints": 2,
            "seed": 0,  # shuffling and held-out split
            "prefetch": 2,  # batches prepared ahead by a grain thread
        }
    )


def ppm_train_config() -> config_dict.ConfigDict:
    """PPM hyper-parameters (rstar_jax.train.ppm); the value head starts fresh on the SFT policy."""
    config = train_config()
    config.seq_len = 1024  # question prompt + prefix steps + one step
    config.head_init_std = 0.02  # std of the fresh value head's weights
    config.head_seed = 0
    return config


def mcts_config() -> config_dict.ConfigDict:
    """Search settings (reference values from DESIGN.md)."""
    return config_dict.ConfigDict(
        {
            "rollouts": 16,
            "num_children": 12,
            "c_puct": 2.0,
            "max_depth": 16,
            "errors_threshold": 1,
            "q_init": "terminal",  # "terminal" (Q starts at 0) or "ppm" (PPM score is the first visit)
        }
    )


def sandbox_config() -> config_dict.ConfigDict:
    """Code execution pool limits; workers=0 means one per core."""
    return config_dict.ConfigDict({"workers": 0, "timeout_s": 5.0, "memory_mb": 1024})


def get_config() -> config_dict.ConfigDict:
    """The full default tree. `stage` picks what launch runs."""
    config = config_dict.ConfigDict()
    config.stage = "show"  # show | sft | ppm | evolve | eval
    config.seed = 0
    config.init_checkpoint = ""
    config.tokenizer = ""  # defaults to the tokenizer.json beside init_checkpoint
    config.model = model_config()
    config.mesh = mesh_config()
    config.train = train_config()
    config.ppm_train = ppm_train_config()
    config.mcts = mcts_config()
    config.sandbox = sandbox_config()
    return config

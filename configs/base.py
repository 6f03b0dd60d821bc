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
    """Policy SFT hyper-parameters (reference: lr 7e-6, 2 epochs, batch 128)."""
    return config_dict.ConfigDict(
        {
            "learning_rate": 7e-6,
            "epochs": 2,
            "batch_size": 128,
        }
    )


def ppm_train_config() -> config_dict.ConfigDict:
    """Process preference model training hyper-parameters."""
    return config_dict.ConfigDict(
        {
            "learning_rate": 7e-6,
            "epochs": 2,
            "batch_size": 128,
        }
    )


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

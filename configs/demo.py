"""The embedded demo (`make demo`): four rounds of self-evolution on toy arithmetic word problems,
from a ~0.19M-parameter (hidden 64, 3 layers) Qwen2 pretrained on a noisy scripted teacher, on a laptop CPU.
vocab_size 512: the BPE saturates at 514 on this corpus, and longer merges keep level-6 prompt+solution
(~230 tokens) inside seq_len 256 (at 384, 41% of teacher examples were cut). Measured on a shared 2-core
machine (load ~3.5-4): 6 epochs (747 steps) took 357 s and gave held-out greedy 5% (no copying of
numbers/names from the question yet); 6 more epochs (measured as a continuation, 311 s) gave loss 0.24 and
greedy 9% (numbers copied, object/variable name not yet). 12 epochs is the smallest setting seen to start
copying; the issue's base target (20-35%) needs still more steps or a larger model."""
from configs import base


def get_config():
    config = base.get_config()
    config.stage = "evolve"
    config.model.param_dtype = config.model.dtype = "float32"
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    config.world = dict(kind="toyworld", seed=0, n_train=1200, n_pool=128, n_heldout=200, noise=1.0,
                        vocab_size=512, samples_per_problem=1)
    config.arch = dict(hidden_size=64, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=2, rope_theta=10000.0, tie_word_embeddings=True,
                       max_position_embeddings=384)
    config.pretrain = base.train_config()
    _small_training(config.pretrain, lr=8e-3, epochs=12)
    config.pretrain.batch_size = 8  # more, smaller steps: the tiny base learns the format faster per token
    _small_training(config.train, lr=3e-3, epochs=2)
    _small_training(config.ppm_train, lr=2e-3, epochs=1)
    config.max_pool_problems, config.max_heldout_problems = 96, 100
    config.teacher_mix = 0.5
    m = config.mcts
    m.batch_trees, m.num_children, m.max_step_tokens, m.max_nodes = 128, 4, 48, 128
    m.temperature, m.top_p, m.dedupe = 1.0, 1.0, "code"
    for r, rollouts in ((1, 8), (2, 8), (3, 8), (4, 8)):
        config[f"round{r}"].rollouts = rollouts
    config.round4.extra_rollouts = [16]
    config.eval.samples, config.eval.temperature, config.eval.top_p, config.eval.max_tokens = 4, 1.0, 1.0, 256
    config.eval.mcts_overrides = dict(num_children=4, rollouts=8, runs=2, vote_top_k=2)
    config.eval.equal_budget = True  # last round: MCTS (terminal-guided and PPM) vs best-of-N at equal tokens
    config.control.enabled = True
    config.sandbox.timeout_s = 2.0
    config.sandbox.memory_mb = 512
    return config


def _small_training(cfg, *, lr: float, epochs: int) -> None:
    """Tiny-model training settings: short sequences, small batches, larger learning rate."""
    cfg.learning_rate, cfg.epochs = lr, epochs
    cfg.batch_size, cfg.seq_len = 16, 256
    cfg.warmup_ratio, cfg.eval_fraction, cfg.log_every, cfg.checkpoint_every = 0.05, 0.05, 20, 50

"""A seconds-scale toy loop for the tests: the whole of `demo` (world, base, four rounds, control,
report) on a handful of problems with a very small model. Every value is set here, so tuning the
demo never changes what the tests run."""
from configs import base


def get_config():
    config = base.get_config()
    config.stage = "evolve"
    config.model.param_dtype = config.model.dtype = "float32"
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    config.world = dict(kind="toyworld", seed=0, n_train=48, n_pool=6, n_heldout=6, noise=1.0, vocab_size=320,
                        samples_per_problem=1)
    config.arch = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, rope_theta=10000.0, tie_word_embeddings=True,
                       max_position_embeddings=512)
    config.pretrain = base.train_config()
    for cfg, lr, epochs in ((config.pretrain, 1e-2, 6), (config.train, 2e-3, 1), (config.ppm_train, 1e-3, 1)):
        cfg.learning_rate, cfg.epochs, cfg.batch_size, cfg.seq_len = lr, epochs, 8, 256
        cfg.warmup_ratio, cfg.eval_fraction, cfg.log_every, cfg.checkpoint_every = 0.05, 0.05, 20, 1000
    m = config.mcts
    m.batch_trees, m.num_children, m.max_step_tokens, m.max_nodes = 4, 2, 24, 128
    m.temperature, m.top_p, m.dedupe = 1.0, 1.0, "code"
    m.prefix_cache_mb = 64  # as in demo: the kill-and-resume tests run with cached paths
    for r in (1, 2, 3, 4):
        config[f"round{r}"].rollouts = 2
    config.round4.extra_rollouts = [2]
    config.eval.samples, config.eval.temperature, config.eval.top_p, config.eval.max_tokens = 2, 1.0, 1.0, 96
    config.eval.mcts_overrides = dict(num_children=2, rollouts=2, runs=2, vote_top_k=2)
    config.eval.equal_budget, config.eval.equal_budget_problems = True, 4
    config.accumulate_data = True
    config.control.enabled = True
    config.sandbox.workers, config.sandbox.timeout_s, config.sandbox.memory_mb = 2, 2.0, 512
    return config

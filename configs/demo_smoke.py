"""A seconds-scale version of the demo for the tests: the whole loop (world, base, four rounds,
control, report) on a handful of problems with a very small model."""
from configs import demo


def get_config():
    config = demo.get_config()
    config.world.update(dict(n_train=48, n_pool=6, n_heldout=6, vocab_size=320))
    config.arch.update(dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                            num_key_value_heads=1, max_position_embeddings=512))
    for cfg in (config.pretrain, config.train, config.ppm_train):
        cfg.epochs, cfg.batch_size, cfg.seq_len, cfg.checkpoint_every = 1, 8, 256, 1000
    config.pretrain.epochs, config.pretrain.learning_rate = 6, 1e-2
    config.mcts.batch_trees, config.mcts.num_children, config.mcts.max_step_tokens = 4, 2, 24
    for r in (1, 2, 3, 4):
        config[f"round{r}"].rollouts = 2
    config.round4.extra_rollouts = [2]
    config.eval.samples, config.eval.max_tokens = 2, 96
    config.eval.mcts_overrides = dict(num_children=2, rollouts=2, runs=2, vote_top_k=2)
    config.sandbox.workers = 2
    return config

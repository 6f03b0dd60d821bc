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
            "max_steps": 0,  # stop after this many optimizer steps (the schedule spans them); 0 = every epoch
            "min_steps": 0,  # SFT: repeat the data past `epochs` until at least this many steps; 0 = just `epochs`
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
    """PPM hyper-parameters (rstar_jax.train.ppm); the PPM starts from the SFT policy."""
    config = train_config()
    config.seq_len = 1024  # one pair's row: question prompt + prefix steps + its two steps
    config.min_width = 64  # a batch is cut to the power-of-two bucket >= its longest row; 0 = always seq_len
    # Batches of like lengths: each shuffled pass is cut into runs of `group` batches sorted by row length
    # (toy-world rows run ~60 to ~450 tokens, so a random batch is mostly padding; bench_ppm_train: 1.75x).
    # On a dev split (run D's round-4 pairs and policy; 4 seeds grouped, 5 not), best-of-4 by the trained PPM
    # was 0.890 grouped and 0.891 not; its ranking of right above wrong samples 0.81 (0.75-0.86) against
    # 0.83 (0.74-0.89), within the seeds' spread. 0 = a plain shuffle.
    config.group = 16
    # "value" (the reference: Linear(hidden -> 1) on the last token) or "logprob" (the step reward is the
    # log-probability the PPM, an LM initialised from the policy, gives the step's tokens).
    config.head = "value"
    config.head_init_std = 0.02  # std of the fresh value head's weights
    config.head_seed = 0
    return config


def mcts_config() -> config_dict.ConfigDict:
    """Search settings (reference values from DESIGN.md; deviations say so). Read by rstar_jax.mcts.
    Sequences are tuples, which the command line can override: --config.round4.extra_rollouts="(64, 128)"."""
    return config_dict.ConfigDict(
        {
            # Budget and batching.
            "rollouts": 16,  # rollouts per problem (R1: 8, R2-R4: 16)
            "extra_rollouts": (),  # round-4 rule: unsolved problems are searched again, fresh tree and seed, with these budgets in turn ([64, 128])
            "batch_trees": 64,  # trees advanced in lockstep; a finished tree hands its slot to the next problem
            "pipeline_groups": 1,  # the trees split into this many groups that take turns: one group's programs run in the sandbox while the next decodes
            "max_nodes": 512,  # initial node capacity per tree; grows (doubling, one recompile) when a tree fills it
            # Expansion.
            "num_children": 12,  # candidates sampled per expansion (reference n = 12)
            "width_by_depth": (),  # optional n per depth (index = depth of the expanded node, last entry repeats); () = num_children
            "dedupe": "text",  # "text" (reference: identical texts), "code" (same code once comments/spacing are removed), "none"
            "one_final_per_expansion": True,  # keep only the first candidate that ends the solution (code end or answer)
            "max_step_tokens": 256,  # decode budget per step (and per answer continuation)
            "temperature": 0.7,
            "top_p": 0.95,
            "top_k": 0,  # 0 = off
            "exec_cache": False,  # run each distinct program text once per search (programs are assumed deterministic)
            "share_prefix": True,  # LM policy: one prompt row with n samples (one prefill per expansion) vs n copies
            "prefix_cache_mb": 0,  # host MiB of keys/values kept by the LM policy (sampled steps, so an expanded node's path is not prefilled again) and, as much again, by the PPM scorer (scored paths, so a child runs only its new step); 0 = off
            # Selection and values.
            "c_puct": 2.0,  # UCT exploration constant
            "unvisited_score": 0.0,  # score of an unvisited child; the reference's 0 (Q 0, no bonus) -- a visited child with Q < 0 and a small bonus ranks below it
            "random_ties": False,  # break UCT ties at random (per-tree seeded) instead of taking the first child
            "max_depth": 16,  # a non-final step deeper than this is a dead terminal
            "errors_threshold": 1,  # consecutive erroring steps that make a node dead (bootstrap round: 2)
            "positive_reward": 1.0,  # correct answer, backed up to the root
            "negative_reward": -1.0,  # wrong answer (backed up) and dead terminals (on themselves only)
            "q_init": "terminal",  # "terminal" (new nodes start unvisited, Q 0) or "ppm" (PPM step score counts as the first visit)
            # Output.
            "flush_every": 16,  # finished trees per partial shard file (resume granularity after a kill)
            # Inference (no ground truth): terminals are scored by the PPM.
            "runs": 4,  # independent searches per problem
            "vote_top_k": 4,  # majority vote over the top-K runs by PPM score
            # A run's answer: its terminal whose path scores best (rstar_jax.mcts.run.path_score): by the answer
            # step's own PPM score ("last", the reference), the path's lowest ("min") or the product of
            # (1 + s) / 2 over the path ("prod"); best-of-N in evaluation reads whole solutions the same way.
            "terminal_score": "last",
        }
    )


def selection_config() -> config_dict.ConfigDict:
    """Data selection from search trees (rstar_jax.data.selection.SelectionConfig; reference values)."""
    return config_dict.ConfigDict(
        {
            "sft_per_problem": 2,  # top correct trajectories per problem by mean step Q
            "ppm_per_side": 2,  # positives (highest Q) and negatives (lowest Q) per node
            "ppm_other_side": 4,  # taken from the other side when one side has a single candidate
            "ppm_min_q_margin": 0.5,  # Q(pos) - Q(neg) at least this
            "ppm_min_edit_distance": 20,  # pos and neg steps at least this many characters apart
            "ppm_final_per_side": 2,  # the paper's final-answer pairs: whole correct vs wrong trajectories per tree
        }
    )


def sandbox_config() -> config_dict.ConfigDict:
    """Code execution pool limits; workers=0 means one per core."""
    return config_dict.ConfigDict({"workers": 0, "timeout_s": 5.0, "memory_mb": 1024})


def eval_config() -> config_dict.ConfigDict:
    """Held-out evaluation (rstar_jax.evaluate): greedy, majority vote / best-of-N over `samples`, MCTS + PPM."""
    return config_dict.ConfigDict(
        {
            "samples": 8,  # N for majority vote and best-of-N (1 = greedy only)
            "sample_every_round": False,  # evolve: sampled metrics every round, not only for the base and last round
            "temperature": 0.7,
            "top_p": 0.95,
            "max_tokens": 1024,  # decode budget for a whole solution up to <end_of_code>
            "max_rows": 256,  # sequences per generate call (prefill memory grows with rows x prompt length^2)
            "mcts_ppm": True,  # MCTS + PPM with top-K vote (last round only in evolve; needs a PPM)
            "equal_budget": False,  # last round: terminal-guided / PPM MCTS vs best-of-N at equal decoded tokens
            "equal_budget_problems": 0,  # the first this many held-out problems in that comparison; 0 = all
            # Inference search (paper: n = 32 children, several runs, top-K vote); PPM-augmented.
            "mcts_overrides": {"num_children": 32, "rollouts": 12, "runs": 4, "vote_top_k": 4},
        }
    )


def round_config(rollouts: int, *, use_ppm: bool, errors_threshold: int, extra_rollouts=()) -> config_dict.ConfigDict:
    """One round's search settings (DESIGN.md "Rounds"); they override `config.mcts` for that round."""
    return config_dict.ConfigDict(
        {
            "rollouts": rollouts,
            "use_ppm": use_ppm,  # PPM-augmented: the previous round's PPM scores every new node
            "q_init": "ppm" if use_ppm else "terminal",
            "errors_threshold": errors_threshold,
            "extra_rollouts": tuple(extra_rollouts),  # round 4: unsolved problems get these budgets in turn
        }
    )


def evolve_config(config: config_dict.ConfigDict) -> None:
    """The round loop's fields (rstar_jax.evolve): which rounds, where problems and checkpoints live."""
    config.first_round = 1
    config.last_round = 4
    config.round1 = round_config(8, use_ppm=False, errors_threshold=2)  # bootstrap, terminal-guided
    config.round2 = round_config(16, use_ppm=False, errors_threshold=1)  # SLM-r1, terminal-guided
    config.round3 = round_config(16, use_ppm=True, errors_threshold=1)  # PPM-augmented
    config.round4 = round_config(16, use_ppm=True, errors_threshold=1, extra_rollouts=(64, 128))
    config.problems = ""  # jsonl searched every round (MATH/GSM8K shapes)
    config.eval_problems = ""  # held-out jsonl for evaluation
    config.base_checkpoint = ""  # HF dir every round's SFT starts from (Qwen2.5-Math base)
    config.policy_checkpoint = ""  # policy searching the first round run here, when not in this workdir
    config.ppm_checkpoint = ""  # PPM of the round before the first one run here, when not in this workdir
    config.max_pool_problems = 0  # 0 = all
    config.max_heldout_problems = 0
    config.accumulate_data = False  # round r trains on every round's selection in this workdir (the reference: round r's own)
    config.accumulate_pairs = False  # the same for the PPM's preference pairs
    config.teacher_mix = 0.0  # toy world: share of teacher solutions mixed into each round's SFT data
    config.world = config_dict.ConfigDict({"kind": "none"})  # "toyworld" for the embedded demo
    config.control = config_dict.ConfigDict({"enabled": False})
    config.eval = eval_config()


def get_config() -> config_dict.ConfigDict:
    """The full default tree. `stage` picks what launch runs."""
    config = config_dict.ConfigDict()
    config.stage = "show"  # show | sft | ppm | evolve | eval
    config.seed = 0
    # JAX's persistent compilation cache (at most 4 GiB, least recently used out): a resumed or repeated run
    # loads its programs instead of compiling them again (seconds each on CPU). "" = off.
    config.compile_cache = "~/.cache/rstar_jax/xla"
    config.init_checkpoint = ""
    config.tokenizer = ""  # defaults to the tokenizer.json beside init_checkpoint
    config.model = model_config()
    config.mesh = mesh_config()
    config.train = train_config()
    config.ppm_train = ppm_train_config()
    config.mcts = mcts_config()
    config.sandbox = sandbox_config()
    config.selection = selection_config()
    evolve_config(config)
    return config

"""The self-evolution round loop as resumable stages.

Each stage owns a directory under the workdir and ends by writing `DONE.json` (its summary)
atomically. A stage with `DONE.json` is never redone; a stage without it is run again from its start
(stages that checkpoint internally, such as search shards and trainers, pick up their own progress).
Stages read only other stages' finished outputs, so a run killed at any moment (even `kill -9`)
continues where it stopped when the same command is run again.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from absl import logging
from etils import epath

from rstar_jax.io import atomic_write_text

DONE = "DONE.json"


def stage_done(workdir: epath.Path, name: str) -> dict[str, Any] | None:
    """The summary of a finished stage, or None when it has not finished."""
    path = workdir / name / DONE
    return json.loads(path.read_text()) if path.exists() else None


def run_stage(workdir: epath.Path, name: str, fn: Callable[[epath.Path], dict[str, Any]]) -> dict[str, Any]:
    """Runs `fn(stage_dir)` unless the stage already finished; records its summary and wall time."""
    summary = stage_done(workdir, name)
    if summary is not None:
        logging.info("stage %s: already done, skipped", name)
        return summary
    stage_dir = workdir / name
    stage_dir.mkdir(parents=True, exist_ok=True)
    logging.info("stage %s: starting", name)
    start = time.time()
    summary = dict(fn(stage_dir))
    summary["seconds"] = round(time.time() - start, 2)
    atomic_write_text(stage_dir / DONE, json.dumps(summary, indent=2, sort_keys=True, default=str))
    logging.info("stage %s: done in %.1fs", name, summary["seconds"])
    return summary


# ---------------------------------------------------------------------------------------------
# The round loop


def tail_loss(metrics: epath.Path, fraction: float = 0.1) -> float:
    """Mean training loss over the last `fraction` of the steps logged in a trainer's `metrics.jsonl`
    (one batch's loss is too noisy to judge a run by)."""
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    losses = [r["loss"] for r in sorted(rows, key=lambda r: r["step"]) if "loss" in r]
    if not losses:
        raise ValueError(f"{metrics}: no training loss logged")
    tail = losses[-max(1, round(len(losses) * fraction)):]
    return float(sum(tail) / len(tail))


def barrier(name: str) -> None:
    """Waits for every process (multi-host) before anyone reads what the others wrote."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def round_settings(config, r: int):
    """The mcts config of round `r`: `config.mcts` with the round's own values (`config.round{r}`) on top."""
    cfg = config.mcts.copy_and_resolve_references()
    spec = config.get(f"round{r}")
    if spec is None:
        raise ValueError(f"config has no section 'round{r}' (rounds run: {config.first_round}..{config.last_round})")
    with cfg.unlocked():
        for key, value in spec.items():
            if key not in ("use_ppm",):
                cfg[key] = value
    return cfg


class Evolution:
    """One self-evolution run in `workdir`: the stage functions and the paths that connect them."""

    def __init__(self, config, workdir: epath.Path, sandbox):
        import jax.numpy as jnp

        from rstar_jax import sharding

        self.config, self.wd, self.sandbox = config, workdir, sandbox
        self.mesh = sharding.make_mesh(dict(config.mesh))
        self.dtype = jnp.dtype(config.model.dtype)
        self.toy = config.world.kind == "toyworld"

    # ---- paths
    def problems_path(self, split: str) -> str:
        if self.toy:
            return str(self.wd / "world" / f"{split}.jsonl")
        return {"pool": self.config.problems, "heldout": self.config.eval_problems}[split]

    def tokenizer_path(self) -> str:
        return str(self.wd / "world") if self.toy else (self.config.tokenizer or self.base_checkpoint())

    def base_checkpoint(self) -> str:
        """Where every round's SFT starts (the reference retrains from the base model each round)."""
        return str(self.wd / "round_0/policy/export") if self.toy else self.config.base_checkpoint

    def policy_checkpoint(self, r: int) -> str:
        """The policy after round `r` (round 0: the base, or the bootstrap policy for real runs)."""
        if r == 0:
            return self.base_checkpoint() if self.toy else (self.config.init_checkpoint or self.config.base_checkpoint)
        path = self.wd / f"round_{r}/policy/export"
        if r < self.config.first_round and self.config.get("policy_checkpoint"):
            return self.config.policy_checkpoint
        return str(path)

    def ppm_checkpoint(self, r: int) -> str | None:
        if r < self.config.first_round and self.config.get("ppm_checkpoint"):
            return self.config.ppm_checkpoint
        path = self.wd / f"round_{r}/ppm/export"
        return str(path) if r >= 1 else None

    # ---- loading
    def tokenizer(self):
        from rstar_jax.tokenizer import StepTokenizer

        return StepTokenizer.from_file(self.tokenizer_path())

    def load_policy(self, path: str):
        from rstar_jax import models

        return models.load_hf(path, dtype=self.dtype, mesh=self.mesh)

    def problems(self, split: str):
        from rstar_jax.data.problems import load_problems

        items = load_problems(self.problems_path(split))
        limit = self.config.get(f"max_{split}_problems", 0)
        return items[:limit] if limit else items

    # ---- stages
    def make_world(self, d: epath.Path) -> dict[str, Any]:
        """Toy world: splits, a tokenizer trained on teacher text, and a fresh tiny policy to pretrain."""
        import numpy as np

        from rstar_jax import models
        from rstar_jax.data import toyworld
        from rstar_jax.data.problems import save_problems
        from rstar_jax.tokenizer import train_demo_tokenizer

        w = self.config.world
        splits = toyworld.splits(w.seed, n_train=w.n_train, n_pool=w.n_pool, n_heldout=w.n_heldout,
                                 n_pool_extra=w.get("n_pool_extra", 0))
        for name, items in splits.items():
            save_problems(d / f"{name}.jsonl", [p.to_problem() for p in items])
        rng = np.random.default_rng(w.seed)
        tok = train_demo_tokenizer(toyworld.tokenizer_corpus(splits["train"], rng, w.noise), vocab_size=w.vocab_size)
        arch = models.Qwen2Config(vocab_size=tok.vocab_size, eos_token_id=tok.eos_id, **dict(self.config.arch))
        model = models.init_model(arch, seed=w.seed)
        models.save_hf(model, d / "init")
        tok.save(d / "init")
        tok.save(d)
        params = sum(x.size for x in __import__("jax").tree.leaves(__import__("flax").nnx.state(model)))
        return {"problems": {k: len(v) for k, v in splits.items()}, "vocab_size": tok.vocab_size, "params": int(params)}

    def teacher_examples(self, n_per_problem: int, seed: int):
        """SFT examples written by the noisy teacher on the train split."""
        import numpy as np

        from rstar_jax.data import toyworld
        from rstar_jax.data.selection import SFTExample

        rng = np.random.default_rng(seed)
        return [SFTExample(p.question, toyworld.teacher_solution(p, rng, self.config.world.noise))
                for p in self.problems("train") for _ in range(n_per_problem)]

    def sft(self, d: epath.Path, init: str, examples, train_cfg) -> dict[str, Any]:
        """Fine-tunes `init` on `examples` and exports to `d/export` (the trainer resumes inside `d`).

        With no examples (a round that verified nothing) the policy stays `init`, and the summary says so.
        """
        from rstar_jax.train import common
        from rstar_jax.train.sft import train_sft

        if not examples:
            logging.warning("%s: no SFT examples; the policy is unchanged", d)
            copy_dir(epath.Path(init), d / "export")
            return {"steps": 0, "skipped": "no verified trajectories", "export": str(d / "export")}
        cfg = self._stage_config(init)
        return common.run_stage(cfg, str(d), kind="policy", train=lambda model, tok, mesh: train_sft(
            model, tok, examples, train_cfg, d, mesh=mesh))

    def pretrain(self, d: epath.Path) -> dict[str, Any]:
        """The toy base: the fresh policy trained on teacher solutions, exported to `d/export`.

        A tiny model starts copying operands only after a late transition whose timing float rounding alone
        moves (README). While the mean training loss of an attempt's last tenth of steps stays above
        `pretrain.retry_above_loss` (0: never), training starts over with the next shuffle seed, at most
        `pretrain.retries` times; the attempt with the lowest such loss is kept. Each attempt is a stage of
        its own (`d/attempt_K`), so a killed run resumes inside the attempt it was in.
        """
        c = self.config
        examples = self.teacher_examples(c.world.samples_per_problem, c.seed)
        limit, retries = c.pretrain.get("retry_above_loss", 0.0), c.pretrain.get("retries", 0)
        attempts = []
        for k in range(retries + 1):
            cfg = c.pretrain.copy_and_resolve_references()
            cfg.seed += k
            name = f"{d.relative_to(self.wd)}/attempt_{k}"
            summary = self._stage(name, lambda a, cfg=cfg: self.sft(a, str(self.wd / "world/init"), examples, cfg))
            attempts.append({**summary, "attempt": k, "tail_loss": tail_loss(self.wd / name / "metrics.jsonl")})
            if not limit or attempts[-1]["tail_loss"] <= limit:
                break
            logging.warning("%s: attempt %d ended at a training loss of %.4f > %.4f (copying not learnt)%s", d, k,
                            attempts[-1]["tail_loss"], limit, "; retrying with the next seed" if k < retries else "")
        best = min(attempts, key=lambda a: a["tail_loss"])
        copy_dir(epath.Path(best["export"]), d / "export")
        return {**best, "export": str(d / "export"), "tail_losses": [a["tail_loss"] for a in attempts]}

    def train_ppm(self, d: epath.Path, init: str, pairs) -> dict[str, Any]:
        """A PPM from the round's policy (fresh value head) trained on `pairs`; untrained when there are none."""
        from rstar_jax.train import common
        from rstar_jax.train.ppm import train_ppm

        cfg = self._stage_config(init)
        if not pairs:
            logging.warning("%s: no preference pairs; the PPM keeps its fresh value head", d)
            return common.run_stage(cfg, str(d), kind="ppm", train=lambda model, tok, mesh: (
                model, {"steps": 0, "skipped": "no preference pairs"}))
        return common.run_stage(cfg, str(d), kind="ppm", train=lambda model, tok, mesh: train_ppm(
            model, tok, pairs, self.config.ppm_train, d, mesh=mesh))

    def _stage_config(self, init: str):
        cfg = self.config.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.init_checkpoint = init
            cfg.tokenizer = self.tokenizer_path()
        return cfg

    def search(self, d: epath.Path, r: int) -> dict[str, Any]:
        from rstar_jax.mcts.lm_policy import LMPolicy
        from rstar_jax.mcts.run import search
        from rstar_jax.evaluate import load_ppm
        from rstar_jax.mcts.scorer import PPMScorer

        cfg = round_settings(self.config, r)
        tok = self.tokenizer()
        policy = LMPolicy(self.load_policy(self.policy_checkpoint(r - 1)), tok, cfg, mesh=self.mesh)
        scorer = None
        if self.config[f"round{r}"].get("use_ppm", False):
            scorer = PPMScorer(load_ppm(self.ppm_checkpoint(r - 1), self.dtype, self.mesh), tok,
                               cache_mb=cfg.get("prefix_cache_mb", 0))
        stats = search(self.problems("pool"), policy, cfg, sandbox=self.sandbox, ppm=scorer,
                       seed=derive(self.config.seed, r), out_dir=d)
        return {"problems": stats.problems, "solved": stats.solved, "rollouts": stats.rollouts,
                "tokens_decoded": stats.tokens_decoded, "programs": stats.programs}

    def select(self, d: epath.Path, r: int) -> dict[str, Any]:
        """Selects this round's SFT examples and PPM pairs from its search trees (`*_round.jsonl`), then
        builds the training sets from them (`training_sets`)."""
        from rstar_jax.data.selection import SelectionConfig, select_to_files

        shards = sorted((self.wd / f"round_{r}/search").glob("trees-*.jsonl"))
        n_sft, n_ppm = select_to_files(shards, d / "sft_round.jsonl", d / "ppm_round.jsonl",
                                       SelectionConfig(**self.config.selection.to_dict()))
        return {"sft_round": n_sft, "ppm_round": n_ppm, **self.training_sets(d, r)}

    def training_sets(self, d: epath.Path, r: int) -> dict[str, Any]:
        """Writes round r's `sft.jsonl` and `ppm.jsonl`: its own selection or, with `accumulate_data` (SFT
        examples) / `accumulate_pairs` (PPM pairs), every round's so far without repeats; in the toy world,
        `teacher_mix` teacher solutions are added."""
        from rstar_jax.data.selection import read_ppm, read_sft, write_ppm, write_sft

        rounds = lambda flag: list(range(self.config.first_round if self.config.get(flag, False) else r, r + 1))
        selections = lambda ks: [self.wd / f"round_{k}/select" for k in ks]
        sft_rounds, pair_rounds = rounds("accumulate_data"), rounds("accumulate_pairs")
        sft = _gather(selections(sft_rounds), "sft_round.jsonl", read_sft)
        pairs = _gather(selections(pair_rounds), "ppm_round.jsonl", read_ppm)
        mix = self.config.get("teacher_mix", 0.0) if self.toy else 0.0
        n_teacher = int(round(len(sft) * mix / (1.0 - mix))) if 0 < mix < 1 else 0
        teacher = self.teacher_examples(1, derive(self.config.seed, r, "mix"))[:n_teacher] if n_teacher else []
        write_sft(d / "sft.jsonl", sft + teacher)
        write_ppm(d / "ppm.jsonl", pairs)
        return {"sft_examples": len(sft), "teacher_examples": len(teacher), "ppm_pairs": len(pairs),
                "rounds": sft_rounds, "ppm_rounds": pair_rounds}

    def ppm_needed(self, r: int) -> bool:
        """Whether round `r`'s PPM is read: by the next round's PPM-augmented search or the last round's eval."""
        c = self.config
        return r == c.last_round or bool(c.get(f"round{r + 1}", {}).get("use_ppm", False))

    def evaluate(self, policy_path: str, ppm_path: str | None, *, mcts: bool, sampled: bool = False) -> dict[str, Any]:
        """Held-out evaluation: greedy every round; sampled metrics (majority, best-of-N) in the base
        and last rounds (`sampled`, `mcts`) unless `eval.sample_every_round`; the last round (`mcts`)
        adds MCTS + PPM and, when configured, the equal-budget comparison with that round's search settings."""
        from rstar_jax.evaluate import evaluate_checkpoints

        config = self.config
        if not (sampled or mcts or config.eval.get("sample_every_round", False)):
            config = config.copy_and_resolve_references()
            with config.unlocked():
                config.eval.samples = 1
        budget = round_settings(config, config.last_round) if mcts and config.eval.equal_budget else None
        return evaluate_checkpoints(config, policy_path, ppm_path, self.tokenizer(), self.problems("heldout"),
                                    sandbox=self.sandbox, mesh=self.mesh, mcts=mcts, budget_mcts=budget)

    # ---- the loop
    def run(self) -> dict[str, Any]:
        from rstar_jax.data.selection import read_ppm, read_sft

        c = self.config
        stage = lambda name, fn: self._stage(name, fn)
        if self.toy:
            stage("world", self.make_world)
            stage("round_0/policy", self.pretrain)
        if c.first_round <= 1:
            stage("round_0/eval", lambda d: self.evaluate(self.policy_checkpoint(0), None, mcts=False, sampled=True))
        for r in range(c.first_round, c.last_round + 1):
            stage(f"round_{r}/search", lambda d, r=r: self.search(d, r))
            stage(f"round_{r}/select", lambda d, r=r: self.select(d, r))
            data = self.wd / f"round_{r}/select"
            stage(f"round_{r}/policy", lambda d, r=r: self.sft(d, self.base_checkpoint(),
                                                               read_sft(data / "sft.jsonl"), c.train))
            if self.ppm_needed(r):
                stage(f"round_{r}/ppm", lambda d, r=r: self.train_ppm(d, self.policy_checkpoint(r),
                                                                      read_ppm(data / "ppm.jsonl")))
            stage(f"round_{r}/eval", lambda d, r=r: self.evaluate(
                self.policy_checkpoint(r), self.ppm_checkpoint(r) if self.ppm_needed(r) else None,
                mcts=r == c.last_round))
            self.report()
        if self.toy and c.control.enabled:
            steps = (stage_done(self.wd, f"round_{c.last_round}/policy") or {}).get("steps", 0)
            stage("control/policy", lambda d: self.control(d, steps))
            stage("control/eval", lambda d: self.evaluate(str(self.wd / "control/policy/export"), None, mcts=False))
        return self.report()

    def _stage(self, name: str, fn) -> dict[str, Any]:
        summary = run_stage(self.wd, name, fn)
        barrier(name)
        return summary

    def control(self, d: epath.Path, steps: int) -> dict[str, Any]:
        """The base trained further on fresh teacher solutions for exactly as many steps as the last round's SFT."""
        if steps == 0:  # the last round trained nothing (it verified nothing): neither does the control
            return self.sft(d, self.base_checkpoint(), [], self.config.train)
        train_cfg = self.config.train.copy_and_resolve_references()
        examples = self.teacher_examples(self.config.world.samples_per_problem, derive(self.config.seed, "control"))
        with train_cfg.unlocked():
            train_cfg.min_steps = train_cfg.max_steps = steps
        return self.sft(d, self.base_checkpoint(), examples, train_cfg)

    def report(self) -> dict[str, Any]:
        """Rebuilds report.json / report.png / the table from the finished stages."""
        from rstar_jax.report import write_report

        rounds = []
        for r in range(0, self.config.last_round + 1):
            ev = stage_done(self.wd, f"round_{r}/eval")
            if ev is None:
                continue
            search = stage_done(self.wd, f"round_{r}/search") or {}
            ppm = stage_done(self.wd, f"round_{r}/ppm") or {}
            seconds = {k: (stage_done(self.wd, f"round_{r}/{k}") or {}).get("seconds", 0.0)
                       for k in ("search", "select", "policy", "ppm", "eval")}
            rounds.append({"round": r, "heldout": {k: ev.get(k) for k in
                                                   ("greedy", "majority", "best_of_n", "mcts_ppm", "pass_at_n",
                                                    "ranking", "by_level")},
                           # counters that survive a resumed search (token counts cover the last call only)
                           "search": {k: search.get(k, 0) for k in ("problems", "solved", "rollouts")},
                           "ppm": {"pair_acc": ppm.get("eval_accuracy")}, "seconds": seconds})
        report: dict[str, Any] = {"rounds": rounds}
        final = stage_done(self.wd, f"round_{self.config.last_round}/eval") or {}
        if final.get("equal_budget"):
            report["equal_budget"] = final["equal_budget"]
        control = stage_done(self.wd, "control/eval")
        if control:
            report["control"] = {"heldout": {k: control.get(k) for k in ("greedy", "by_level")}}
        if jax_process_index() == 0:
            print(write_report(self.wd, report), flush=True)
        return report


def _gather(dirs: list[epath.Path], name: str, read: Callable[[epath.Path], list]) -> list:
    """The records of file `name` in each of `dirs` that has one, in order, without repeats (records
    compare by value; the first occurrence is kept)."""
    return list(dict.fromkeys(x for d in dirs if (d / name).exists() for x in read(d / name)))


def copy_dir(src: epath.Path, dst: epath.Path) -> None:
    """Copies the files of `src` into `dst` (each file written atomically)."""
    from rstar_jax.io import atomic_write_bytes

    for f in src.iterdir():
        if f.is_file():
            atomic_write_bytes(dst / f.name, f.read_bytes())


def jax_process_index() -> int:
    import jax

    return jax.process_index()


def derive(*parts) -> int:
    """A stable 31-bit seed from parts (round-specific search seeds)."""
    from rstar_jax.mcts.policy import derive_seed

    return derive_seed(*parts) & 0x7FFFFFFF


def run(config, workdir: str) -> dict[str, Any]:
    """The `evolve` stage: every round of the config, resumable (see the module docstring)."""
    import jax

    from rstar_jax.sandbox import Sandbox

    wd = epath.Path(workdir)
    wd.mkdir(parents=True, exist_ok=True)
    sb = config.sandbox
    with Sandbox(workers=sb.workers or None, timeout_s=sb.timeout_s, memory_mb=sb.memory_mb) as sandbox:
        evo = Evolution(config, wd, sandbox)
        with jax.set_mesh(evo.mesh):
            return evo.run()

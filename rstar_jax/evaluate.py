"""Evaluation of a policy (and PPM) on problems with ground truth: greedy pass@1, majority vote,
best-of-N by PPM score, MCTS + PPM with a top-K vote, and the equal decoded-token budget comparison;
with sampling, also pass@N and how often the PPM and the policy's log-probability rank a right sample
above a wrong one (a PPM that ranks worse than the policy cannot make best-of-N beat greedy).

A whole solution is sampled the way the search writes its final step: decode to `<end_of_code>`
(intermediate `<end_of_step>` markers are part of the text), run the program in the sandbox, append
its output, and decode the answer up to `<end_of_answer>`.
"""
from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from rstar_jax.generate import Generator
from rstar_jax.grading import extract_answer, is_equiv
from rstar_jax.mcts.policy import derive_seed
from rstar_jax.mcts.run import path_score, vote
from rstar_jax.steps import END_OF_ANSWER, END_OF_CODE, build_prompt, format_output, program, split_steps, stop_kind


@dataclasses.dataclass
class Solution:
    """One sampled full solution, its extracted answer, correctness, decoded-token count and the policy's
    summed log-probability of the tokens it decoded (code and answer; not the executed output)."""

    text: str
    answer: str | None
    correct: bool
    tokens: int
    logprob: float


def sample_solutions(generator: Generator, tokenizer, problems: Sequence[Any], n: int, *, sandbox,
                     temperature: float, top_p: float = 1.0, max_tokens: int = 512, answer_tokens: int = 64,
                     seed: int = 0, max_rows: int = 256) -> list[list[Solution]]:
    """`n` full solutions per problem (greedy when temperature is 0), executed and graded.

    A generate call gets at most `max_rows` sequences (problems x samples; the generator pads them to a
    compiled bucket of at most a few times that): the equal-budget comparison can ask for hundreds of
    samples per problem, and a prefill's attention scores grow with rows x prompt length squared (2048
    answer continuations of ~300-token prompts took the demo past 24 GB).
    Results do not depend on `max_rows` while n <= max_rows (each problem keeps its own seed); a larger
    n is drawn in groups of max_rows samples, each group with its own derived seed."""
    if max_rows < 1:
        raise ValueError(f"sample_solutions: max_rows must be >= 1, got {max_rows}")
    out: list[list[Solution]] = [[] for _ in problems]
    for start in range(0, n, max_rows):
        group = min(max_rows, n - start)
        group_seed = seed if start == 0 else derive_seed(seed, "samples", start)
        per_call = max(1, max_rows // group)
        for lo in range(0, len(problems), per_call):
            rows = _sample_call(generator, tokenizer, problems[lo:lo + per_call], group, sandbox=sandbox,
                                temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                                answer_tokens=answer_tokens, seed=group_seed)
            for k, row in enumerate(rows):
                out[lo + k].extend(row)
    return out


def _sample_call(generator: Generator, tokenizer, problems: Sequence[Any], n: int, *, sandbox, temperature: float,
                 top_p: float, max_tokens: int, answer_tokens: int, seed: int) -> list[list[Solution]]:
    """One generate call for `problems` x `n` solutions, then their code run, answers decoded and graded."""
    code_stops = [tokenizer.token_id(END_OF_CODE), tokenizer.token_id(END_OF_ANSWER), tokenizer.eos_id]
    prompts = tokenizer.encode_batch([build_prompt(p.question) for p in problems])
    seeds = [derive_seed(seed, "eval", p.id) for p in problems]
    first = generator.generate(prompts, max_tokens, n=n, temperature=temperature, top_p=top_p,
                               stop_token_ids=code_stops, decode=tokenizer, seeds=seeds)
    texts = [c.text for c in first]
    tokens = [c.new_tokens for c in first]
    logprobs = [c.logprob for c in first]
    finals = [i for i, t in enumerate(texts) if stop_kind(t) == "code"]
    results = sandbox.run_many([program([texts[i]]) for i in finals])
    for i, res in zip(finals, results):
        texts[i] += format_output(res.stdout, res.error)
    if finals:
        tails = generator.generate(
            [prompts[i // n] + tokenizer.encode(texts[i]) for i in finals], answer_tokens, temperature=temperature,
            top_p=top_p, stop_token_ids=[tokenizer.token_id(END_OF_ANSWER), tokenizer.eos_id], decode=tokenizer,
            seeds=[derive_seed(seeds[i // n], "answer", i % n) for i in finals])
        for i, c in zip(finals, tails):
            texts[i] += c.text
            tokens[i] += c.new_tokens
            logprobs[i] += c.logprob
    out: list[list[Solution]] = []
    for k, p in enumerate(problems):
        row = []
        for i in range(k * n, (k + 1) * n):
            answer = extract_answer(texts[i]) if stop_kind(texts[i]) == "answer" else None
            row.append(Solution(texts[i], answer, answer is not None and is_equiv(answer, p.answer), tokens[i],
                                logprobs[i]))
        out.append(row)
    return out


def accuracy_by_level(problems: Sequence[Any], correct: Sequence[bool]) -> dict[str, float]:
    """Mean correctness per difficulty level (problems without a level are left out)."""
    groups: dict[str, list[bool]] = defaultdict(list)
    for p, c in zip(problems, correct):
        if getattr(p, "level", None) is not None:
            groups[str(p.level)].append(bool(c))
    return {lvl: float(np.mean(v)) for lvl, v in sorted(groups.items(), key=lambda kv: int(kv[0]))}


def _mean(xs) -> float:
    xs = list(xs)
    return float(np.mean(xs)) if xs else 0.0


def majority(solutions: Sequence[Solution]) -> str | None:
    """The most frequent answer among solutions (equivalent answers pooled; ties to the first seen)."""
    answer, _, _ = vote([(s.answer, 1.0) for s in solutions if s.answer is not None], top_k=len(solutions))
    return answer


def best_by_score(solutions: Sequence[Solution], scores: Sequence[float]) -> Solution | None:
    """The answered solution with the highest PPM score."""
    answered = [(sc, i) for i, (s, sc) in enumerate(zip(solutions, scores)) if s.answer is not None]
    return solutions[max(answered)[1]] if answered else None


def ranking_accuracy(rows: Sequence[Sequence[Solution]], scores: Sequence[Sequence[float]]) -> float | None:
    """How often a score ranks a right solution above a wrong one of the same problem: the share of
    (right, wrong) pairs within each row, ties counting half. None when no row mixes right and wrong."""
    wins, pairs = 0.0, 0
    for row, row_scores in zip(rows, scores):
        right = [float(sc) for s, sc in zip(row, row_scores) if s.correct]
        wrong = [float(sc) for s, sc in zip(row, row_scores) if not s.correct]
        for a in right:
            for b in wrong:
                wins += 1.0 if a > b else 0.5 if a == b else 0.0
                pairs += 1
    return wins / pairs if pairs else None


def evaluate_policy(generator: Generator, tokenizer, problems: Sequence[Any], cfg, *, sandbox,
                    scorer=None, mcts_policy=None, seed: int = 0) -> dict[str, Any]:
    """Held-out numbers for one policy: greedy (overall and by level), majority vote over
    `cfg.samples`, best-of-N by PPM score (with a scorer), MCTS + PPM (with `cfg.mcts_ppm` and a policy)."""
    greedy = [row[0] for row in sample_solutions(generator, tokenizer, problems, 1, sandbox=sandbox,
                                                 temperature=0.0, max_tokens=cfg.max_tokens, seed=seed,
                                                 max_rows=cfg.max_rows)]
    out: dict[str, Any] = {
        "problems": len(problems),
        "greedy": _mean(s.correct for s in greedy),
        "by_level": accuracy_by_level(problems, [s.correct for s in greedy]),
        "majority": None, "best_of_n": None, "mcts_ppm": None, "ranking": None,
    }
    if cfg.samples > 1:
        sampled = sample_solutions(generator, tokenizer, problems, cfg.samples, sandbox=sandbox,
                                   temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_tokens, seed=seed,
                                   max_rows=cfg.max_rows)
        out["majority"] = _mean(bool(m is not None and is_equiv(m, p.answer))
                                for p, m in zip(problems, (majority(row) for row in sampled)))
        out["pass_at_n"] = _mean(any(s.correct for s in row) for row in sampled)
        # Can a score tell a right sample from a wrong one? The policy's own log-probability is the baseline
        # a PPM must beat for best-of-N or MCTS + PPM to beat greedy decoding.
        out["ranking"] = {"policy": ranking_accuracy(sampled, [[s.logprob for s in row] for row in sampled]),
                          "ppm": None}
        if scorer is not None:
            scores = solution_scores(scorer, problems, sampled, cfg.mcts.terminal_score)
            picks = [best_by_score(row, sc) for row, sc in zip(sampled, scores)]
            out["best_of_n"] = _mean(best is not None and best.correct for best in picks)
            out["ranking"]["ppm"] = ranking_accuracy(sampled, scores)
    if scorer is not None and mcts_policy is not None and cfg.mcts_ppm:
        from rstar_jax.mcts.run import solve

        records = solve(problems, mcts_policy, scorer, cfg.mcts, sandbox=sandbox, seed=seed)
        out["mcts_ppm"] = _mean(bool(r["correct"]) for r in records)
    logging.info("eval: %s", {k: v for k, v in out.items() if k != "by_level"})
    return out


def solution_scores(scorer, problems: Sequence[Any], rows: Sequence[Sequence[Solution]], how: str) -> list[list[float]]:
    """PPM scores of whole solutions, read as the search reads a path to an answer (`path_score` by
    `how`, `mcts.terminal_score`): each step scored after the prompt and the steps before it (by "last",
    only the final one)."""
    texts, prefixes, spans = [], [], []
    for p, row in zip(problems, rows):
        for s in row:
            prefix, first = build_prompt(p.question), len(texts)
            steps = split_steps(s.text)
            for k, step in enumerate(steps):
                if how != "last" or k == len(steps) - 1:
                    texts.append(prefix + step)
                    prefixes.append(prefix)
                prefix += step
            spans.append((first, len(texts)))
    scores = scorer.score(texts, prefixes) if texts else []
    flat = iter(path_score(list(scores[a:b]), how) if b > a else -math.inf for a, b in spans)
    return [[next(flat) for _ in row] for row in rows]


def load_ppm(path: str, dtype, mesh):
    """A PPM checkpoint (value head included) in inference dtype."""
    from rstar_jax import models

    return models.load_hf_ppm(path, dtype=dtype, mesh=mesh)


def evaluate_checkpoints(config, policy_path: str, ppm_path: str | None, tokenizer, problems, *, sandbox, mesh,
                         mcts: bool, budget_mcts=None) -> dict[str, Any]:
    """`evaluate_policy` for an HF policy checkpoint and optional PPM checkpoint, settings from `config.eval`.

    The MCTS + PPM run uses `config.mcts` with PPM-augmented values and `config.eval.mcts_overrides`.
    With `budget_mcts` (search settings) and a PPM, the equal-budget comparison is added as "equal_budget".
    """
    import jax.numpy as jnp

    from rstar_jax import models
    from rstar_jax.mcts.lm_policy import LMPolicy
    from rstar_jax.mcts.scorer import PPMScorer

    dtype = jnp.dtype(config.model.dtype)
    policy = models.load_hf(policy_path, dtype=dtype, mesh=mesh)
    scorer = (PPMScorer(load_ppm(ppm_path, dtype, mesh), tokenizer, cache_mb=config.mcts.get("prefix_cache_mb", 0))
              if ppm_path else None)
    cfg = config.eval.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.mcts_ppm = bool(mcts and cfg.mcts_ppm)
        cfg.mcts = config.mcts.copy_and_resolve_references()
        cfg.mcts.q_init = "ppm"
        for key, value in config.eval.mcts_overrides.items():
            cfg.mcts[key] = value
    if scorer is not None and scorer.head == "logprob" and cfg.mcts.terminal_score == "last":
        logging.warning("eval: a log-prob PPM with mcts.terminal_score='last' scores a path by its final step's "
                        "probability alone; 'prod' scores the whole path")
    generator = Generator(policy, mesh=mesh)
    mcts_policy = LMPolicy(policy, tokenizer, cfg.mcts, mesh=mesh) if scorer is not None else None
    result = evaluate_policy(generator, tokenizer, problems, cfg, sandbox=sandbox, scorer=scorer,
                             mcts_policy=mcts_policy, seed=config.seed)
    if budget_mcts is not None and scorer is not None:
        with cfg.unlocked():
            cfg.mcts = budget_mcts
        first = cfg.get("equal_budget_problems", 0) or len(problems)
        result["equal_budget"] = equal_budget(generator, tokenizer, LMPolicy(policy, tokenizer, budget_mcts, mesh=mesh),
                                              scorer, problems[:first], cfg, sandbox=sandbox, seed=config.seed)
    return result


def run(config, workdir: str) -> dict[str, Any]:
    """The `eval` stage: `config.init_checkpoint` (policy) and optional `config.ppm_checkpoint` on
    `config.eval_problems`; writes `workdir/eval.json`."""
    import json

    import jax
    from etils import epath

    from rstar_jax import sharding
    from rstar_jax.data.problems import load_problems
    from rstar_jax.io import atomic_write_text
    from rstar_jax.sandbox import Sandbox
    from rstar_jax.tokenizer import StepTokenizer

    for field in ("init_checkpoint", "eval_problems"):
        if not config.get(field):
            raise ValueError(f"config.{field} is required for --config=eval")
    problems = load_problems(config.eval_problems)
    tokenizer = StepTokenizer.from_file(config.tokenizer or config.init_checkpoint)
    mesh = sharding.make_mesh(dict(config.mesh))
    sb = config.sandbox
    with Sandbox(workers=sb.workers or None, timeout_s=sb.timeout_s, memory_mb=sb.memory_mb) as sandbox, \
            jax.set_mesh(mesh):
        result = evaluate_checkpoints(config, config.init_checkpoint, config.get("ppm_checkpoint") or None,
                                      tokenizer, problems, sandbox=sandbox, mesh=mesh, mcts=True)
    atomic_write_text(epath.Path(workdir) / "eval.json", json.dumps(result, indent=2, sort_keys=True))
    return result


def equal_budget(generator: Generator, tokenizer, mcts_policy, scorer, problems: Sequence[Any], cfg, *, sandbox,
                 seed: int = 0) -> dict[str, Any]:
    """The seed's claim at equal decoded tokens: solve rate (a correct answer found, ground truth used
    as in training-data search) of terminal-guided MCTS, PPM-augmented MCTS and best-of-N sampling.

    Both searches run with `cfg.mcts` (rollouts as configured); N is then chosen so best-of-N decodes
    about as many tokens per problem as the larger of the two searches, sampling at the search's
    temperature and top-p (not the evaluation's), so that only the search differs. The explanation is
    built from the measured counters, not written in advance.
    """
    from rstar_jax.mcts.search import LockstepSearch

    results: dict[str, Any] = {"problems": len(problems)}
    counters: dict[str, Any] = {}
    for name, q_init in (("mcts", "terminal"), ("mcts_ppm", "ppm")):
        mcfg = cfg.mcts.copy_and_resolve_references()
        with mcfg.unlocked():
            mcfg.q_init = q_init
        trees = []
        before = mcts_policy.counters.decoded_tokens
        stats = LockstepSearch(mcts_policy, mcfg, sandbox=sandbox, ppm=scorer if q_init == "ppm" else None,
                               seed=seed).run(problems, trees.append, total=len(problems))
        tokens = mcts_policy.counters.decoded_tokens - before
        results[name] = stats.solved / max(len(problems), 1)
        counters[name] = {"tokens": tokens, "candidates": stats.candidates, "duplicates": stats.duplicates,
                          "nodes": sum(len(t.nodes) for t in trees),
                          "errors": sum(n.dead_reason == "error" for t in trees for n in t.nodes),
                          "first_success_rollout": _mean(_first_success(t) for t in trees if _first_success(t))}
    budget = max(counters["mcts"]["tokens"], counters["mcts_ppm"]["tokens"]) / max(len(problems), 1)
    sampler = dict(sandbox=sandbox, temperature=cfg.mcts.temperature, top_p=cfg.mcts.top_p,
                   max_tokens=cfg.max_tokens, max_rows=cfg.max_rows)
    pilot = sample_solutions(generator, tokenizer, problems, 2, seed=seed + 1, **sampler)
    per_sample = _mean(s.tokens for row in pilot for s in row) or 1.0
    n = max(1, int(round(budget / per_sample)))
    sampled = sample_solutions(generator, tokenizer, problems, n, seed=seed, **sampler)
    results["best_of_n"] = _mean(any(s.correct for s in row) for row in sampled)
    counters["best_of_n"] = {"tokens": sum(s.tokens for row in sampled for s in row), "n": n}
    results["n"] = n
    results["tokens"] = {k: v["tokens"] for k, v in counters.items()}
    results["counters"] = counters
    results["explanation"] = _explain(results, counters)
    return results


def _first_success(tree) -> int | None:
    """1-based index, in creation order, of the first node with a correct answer (a proxy for when
    the search first saw a +1); None when it never did."""
    return next((n.id for n in tree.nodes if n.correct), None)


def _explain(results: dict[str, Any], counters: dict[str, Any]) -> str:
    """A sentence from the measured counters: who won, and the costs the search paid."""
    t = counters["mcts"]
    dup = t["duplicates"] / max(t["candidates"], 1)
    order = sorted(("mcts", "mcts_ppm", "best_of_n"), key=lambda k: -results[k])
    return (f"best: {order[0]} ({results[order[0]]:.2f}); terminal-guided MCTS {results['mcts']:.2f}, "
            f"PPM-augmented {results['mcts_ppm']:.2f}, best-of-{results['n']} {results['best_of_n']:.2f} at "
            f"~{results['tokens']['best_of_n'] / max(results['problems'], 1):.0f} tokens/problem. "
            f"Search costs measured: {dup:.0%} of sampled candidates were duplicates; "
            f"{t['errors']} of {t['nodes']} nodes died on a code error (steps that can fail are what per-step "
            f"execution prunes); every expansion decodes n candidates but a rollout follows one.")

"""The LM step policy: candidate steps sampled from a causal LM with rstar_jax.generate.

All expansions of an iteration go to the generator as one batch (one call per distinct width n).
With `share_prefix` each expanded node's prompt is prefilled once and its KV cache serves all n
samples; without it every sample re-prefills the path (the cost the issue measures). Steps end at
the step markers, which are single tokens of the step tokenizer, so stops are detected on device.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rstar_jax.generate import Generator
from rstar_jax.mcts.policy import FinishRequest, PolicyCounters, StepRequest, derive_seed
from rstar_jax.steps import END_OF_ANSWER, STOP_STRINGS


class LMPolicy:
    """`StepPolicy` over a `Qwen2ForCausalLM` and a `StepTokenizer`; sampling settings from the mcts config."""

    def __init__(self, model, tokenizer, cfg, *, mesh=None):
        self.tokenizer = tokenizer
        self.generator = Generator(model, mesh=mesh)
        self.max_new = int(cfg.max_step_tokens)
        self.share_prefix = bool(cfg.share_prefix)
        self.sampling = dict(temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=int(cfg.top_k))
        self.step_stops = [tokenizer.token_id(s) for s in STOP_STRINGS] + [tokenizer.eos_id]
        self.answer_stops = [tokenizer.token_id(END_OF_ANSWER), tokenizer.eos_id]
        self.counters = PolicyCounters()

    def _sample(self, prompts: list[list[int]], n: int, seeds: list[int], stops: list[int]) -> list[list[str]]:
        """n texts per prompt (one generate call); updates the counters."""
        out = self.generator.generate(prompts, self.max_new, n=n, stop_token_ids=stops, decode=self.tokenizer,
                                      seeds=seeds, **self.sampling)
        self.counters.calls += 1
        self.counters.sequences += len(out)
        self.counters.prefill_tokens += sum(len(p) for p in prompts)
        self.counters.decoded_tokens += sum(c.new_tokens for c in out)
        return [[c.text for c in out[i * n:(i + 1) * n]] for i in range(len(prompts))]

    def propose(self, requests: Sequence[StepRequest]) -> list[list[str]]:
        ids = self.tokenizer.encode_batch([r.prompt for r in requests])
        out: list[list[str]] = [[] for _ in requests]
        by_n: dict[int, list[int]] = defaultdict(list)
        for k, r in enumerate(requests):
            by_n[r.n].append(k)
        for n, members in sorted(by_n.items()):
            if self.share_prefix:
                texts = self._sample([ids[k] for k in members], n, [requests[k].seed for k in members], self.step_stops)
                for k, t in zip(members, texts):
                    out[k] = t
            else:  # every sample is its own row and re-prefills the whole path
                rows = [(k, j) for k in members for j in range(n)]
                texts = self._sample([ids[k] for k, _ in rows], 1, [derive_seed(requests[k].seed, j) for k, j in rows],
                                     self.step_stops)
                for (k, _), t in zip(rows, texts):
                    out[k].extend(t)
        return out

    def finish(self, requests: Sequence[FinishRequest]) -> list[str]:
        ids = self.tokenizer.encode_batch([r.prompt for r in requests])
        return [t[0] for t in self._sample(ids, 1, [r.seed for r in requests], self.answer_stops)]

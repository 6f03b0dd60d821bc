"""The LM step policy: candidate steps sampled from a causal LM with rstar_jax.generate.

All expansions of an iteration go to the generator as one batch (one call per distinct width n).
With `share_prefix` each expanded node's prompt is prefilled once and its KV cache serves all n
samples; without it every sample re-prefills the path (the cost the issue measures). Steps end at
the step markers, which are single tokens of the step tokenizer, so stops are detected on device.

With `prefix_cache_mb` > 0 (and `share_prefix`) the keys/values of every candidate that ended on
`<end_of_step>` or `<end_of_code>` are kept on the host, keyed by its node's prompt text (the text the
search asks with when it expands that node, or finishes it from), so an expansion prefills nothing but
new roots and evicted paths, and an answer continuation prefills only the program's output. A candidate
is stored only when its node's text encodes to exactly the tokens that were sampled (a model may
sample a non-canonical split, such as a character cut between byte tokens), so a hit gives what a
prefill of the text would. Least recently used entries go first once the byte budget is reached; a
miss only costs a prefill.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from rstar_jax.generate import STOP_TOKEN, Generator, PrefixCache
from rstar_jax.mcts.policy import FinishRequest, PolicyCounters, StepRequest, derive_seed
from rstar_jax.steps import END_OF_ANSWER, END_OF_CODE, END_OF_STEP, STOP_STRINGS


class LMPolicy:
    """`StepPolicy` over a `Qwen2ForCausalLM` and a `StepTokenizer`; sampling settings from the mcts config."""

    def __init__(self, model, tokenizer, cfg, *, mesh=None):
        self.tokenizer = tokenizer
        self.generator = Generator(model, mesh=mesh)
        self.max_new = int(cfg.max_step_tokens)
        self.share_prefix = bool(cfg.share_prefix)
        budget = int(cfg.get("prefix_cache_mb", 0)) * 2 ** 20
        self.cache = PrefixCache(budget) if budget > 0 and self.share_prefix else None
        self.sampling = dict(temperature=float(cfg.temperature), top_p=float(cfg.top_p), top_k=int(cfg.top_k))
        self.step_stops = [tokenizer.token_id(s) for s in STOP_STRINGS] + [tokenizer.eos_id]
        # Candidates whose keys/values are kept: steps (nodes expanded later) and final steps (finished later).
        self.cached_ends = {tokenizer.token_id(END_OF_STEP), tokenizer.token_id(END_OF_CODE)}
        self.answer_stops = [tokenizer.token_id(END_OF_ANSWER), tokenizer.eos_id]
        self.counters = PolicyCounters()

    def _sample(self, prompts: list[list[int]], n: int, seeds: list[int], stops: list[int]) -> list[list[str]]:
        """n texts per prompt (one generate call); updates the counters."""
        out = self.generator.generate(prompts, self.max_new, n=n, stop_token_ids=stops, decode=self.tokenizer,
                                      seeds=seeds, **self.sampling)
        return self._counted(out, n, sum(len(p) for p in prompts))

    def _sample_cached(self, texts: list[str], n: int, seeds: list[int]) -> list[list[str]]:
        """`_sample` for step proposals with the prefix cache: known prompts are not prefilled, and each
        candidate that ended a step (the only kind the search expands) is stored under prompt +
        candidate when that text encodes to exactly the tokens the keys/values belong to (so a hit
        computes what a prefill would)."""
        known = [self.cache.get(t) for t in texts]
        missing = [i for i, hit in enumerate(known) if hit is None]
        ids = [hit[0] if hit is not None else None for hit in known]
        for i, row in zip(missing, self.tokenizer.encode_batch([texts[i] for i in missing])):
            ids[i] = row
        out, prompt_kv = self.generator.generate_extending(
            [ids[i] if known[i] is None else None for i in range(len(texts))],
            [hit[1] if hit is not None else None for hit in known], self.max_new, n=n,
            stop_token_ids=self.step_stops, decode=self.tokenizer, seeds=seeds, **self.sampling)
        for i in missing:
            self.cache.put(texts[i], ids[i], prompt_kv[i])
        ended = [j for j, c in enumerate(out) if c.stop_reason == STOP_TOKEN and c.tokens[-1] in self.cached_ends]
        encoded = self.tokenizer.encode_extended([(texts[j // n], ids[j // n]) for j in ended],
                                                 [out[j].text for j in ended])
        for j, child_encoded in zip(ended, encoded):
            child_ids = list(ids[j // n]) + out[j].tokens
            if child_encoded == child_ids:
                self.cache.put(texts[j // n] + out[j].text, child_ids, prompt_kv[j // n].extend(out[j].kv))
        self.counters.cached_prompts += len(texts) - len(missing)
        return self._counted(out, n, sum(len(ids[i]) for i in missing))

    def _counted(self, out: list, n: int, prefilled: int) -> list[list[str]]:
        """Counts one generate call's work; returns its texts grouped n per prompt."""
        self.counters.calls += 1
        self.counters.sequences += len(out)
        self.counters.prefill_tokens += prefilled
        self.counters.decoded_tokens += sum(c.new_tokens for c in out)
        return [[c.text for c in out[i * n:(i + 1) * n]] for i in range(len(out) // n)]

    def propose(self, requests: Sequence[StepRequest]) -> list[list[str]]:
        out: list[list[str]] = [[] for _ in requests]
        by_n: dict[int, list[int]] = defaultdict(list)
        for k, r in enumerate(requests):
            by_n[r.n].append(k)
        for n, members in sorted(by_n.items()):
            for k, texts in zip(members, self._propose_n([requests[k] for k in members], n)):
                out[k] = texts
        return out

    def _propose_n(self, requests: list[StepRequest], n: int) -> list[list[str]]:
        """n candidates for each of `requests`: from the prefix cache, one shared prefill each, or n
        copies of each prompt (every sample its own row, re-prefilling the whole path)."""
        prompts, seeds = [r.prompt for r in requests], [r.seed for r in requests]
        if self.cache is not None:
            return self._sample_cached(prompts, n, seeds)
        ids = self.tokenizer.encode_batch(prompts)
        if self.share_prefix:
            return self._sample(ids, n, seeds, self.step_stops)
        rows = [(k, j) for k in range(len(requests)) for j in range(n)]
        texts = self._sample([ids[k] for k, _ in rows], 1, [derive_seed(seeds[k], j) for k, j in rows], self.step_stops)
        return [sum(texts[k * n:(k + 1) * n], []) for k in range(len(requests))]

    def finish(self, requests: Sequence[FinishRequest]) -> list[str]:
        seeds = [r.seed for r in requests]
        if self.cache is None:
            ids = self.tokenizer.encode_batch([r.prompt for r in requests])
            return [t[0] for t in self._sample(ids, 1, seeds, self.answer_stops)]
        # The final step was sampled (and cached) up to <end_of_code>: only its output block is prefilled,
        # on top of it, when the whole prompt's tokens start with the cached ones.
        hits = [self.cache.get(r.code_prompt) for r in requests]
        ids = self.tokenizer.encode_extended(
            [(r.code_prompt, hit[0]) if hit is not None else ("", []) for r, hit in zip(requests, hits)],
            [r.prompt[len(r.code_prompt):] if hit is not None else r.prompt for r, hit in zip(requests, hits)])
        splits = [self.cache.split(r.code_prompt, row) for r, row in zip(requests, ids)]
        use = [i for i, (kv, _) in enumerate(splits) if kv is not None]
        prefixes: list = [None] * len(requests)
        for i, kv in zip(use, self.generator.extend_kv([splits[i][0] for i in use], [splits[i][1] for i in use])):
            prefixes[i] = kv
        out, _ = self.generator.generate_extending(
            [None if prefixes[i] is not None else ids[i] for i in range(len(ids))], prefixes, self.max_new, n=1,
            stop_token_ids=self.answer_stops, decode=self.tokenizer, seeds=seeds, **self.sampling)
        self.counters.cached_prompts += len(use)
        return [t[0] for t in self._counted(out, 1, sum(len(tail) for _, tail in splits))]


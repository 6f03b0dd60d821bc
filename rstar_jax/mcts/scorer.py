"""The PPM as a step scorer for the search: texts in, step scores (`models.step_score`) out, in padded buckets.

Rows are right-padded to a power-of-two length and the batch to a multiple of `batch_size`, so a
whole search compiles a handful of programs. Texts longer than `max_len` tokens keep their last
`max_len` tokens (the value head reads the last token; the newest steps matter most). A log-prob
head scores the tokens after each text's prefix (all but the first token when none is named).

With `cache_mb` > 0, a call that names each text's prefix (the search passes the parent node's text,
scored one level up) keeps every text's keys/values on the host, least recently used out past the
budget, and runs only the tokens after a cached prefix instead of the whole path. A prefix is used
only when the text's tokens start with the prefix's own tokens, so a hit computes what the whole
text would, up to float rounding. A log-prob head re-runs the prefix's last token, whose logits
predict the step's first token.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from rstar_jax.generate import PrefixCache, PrefixKV, bucket, pack_extension, row_bucket, unpack_extension
from rstar_jax.models import functional

NEW_TOKENS_BUCKET = 32  # smallest padded width of the tokens run after a cached prefix (a step is ~10-50 tokens)


class PPMScorer:
    """Scores prompt+response texts with a `Qwen2PPM` (see rstar_jax.mcts.search.StepScorer)."""

    def __init__(self, ppm, tokenizer, *, batch_size: int = 64, max_len: int = 4096, min_len: int = 64,
                 cache_mb: int = 0):
        self.tokenizer, self.batch_size, self.max_len, self.min_len = tokenizer, batch_size, max_len, min_len
        self.head = ppm.head
        fn, self.state = functional(ppm, "scores")
        self._scores = jax.jit(fn)
        cached, _ = functional(ppm, "scores_cached")

        def extend(state, ids, positions, cache, starts):
            p = cache.length - ids.shape[1]
            scores, cache = cached(state, ids, positions, cache, p, starts)
            return scores, [k[:, p:] for k in cache.k], [v[:, p:] for v in cache.v]

        self._extend = jax.jit(extend)
        cfg = ppm.config
        self._kv_shape = (cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim)
        self._kv_dtype = ppm.dtype
        self.cache = PrefixCache(int(cache_mb) * 2 ** 20) if cache_mb > 0 else None
        self.tokens_scored = 0  # tokens run through the PPM (after a cached prefix: only the new ones)

    def score(self, texts: Sequence[str], prefixes: Sequence[str | None] | None = None) -> np.ndarray:
        """Step scores [len(texts)]; `prefixes[i]`, when given, is a text that `texts[i]` extends (the
        step scored is what follows it)."""
        ids = self.tokenizer.encode_batch(list(texts))
        if prefixes is not None and len(prefixes) != len(texts):
            raise ValueError(f"PPMScorer.score: {len(prefixes)} prefixes for {len(texts)} texts")
        if self.cache is None or prefixes is None:
            return self._score_whole(ids, self._starts(prefixes or [None] * len(texts)))
        out = np.zeros(len(ids), np.float32)
        long = [i for i, r in enumerate(ids) if len(r) > self.max_len]
        if long:
            out[long] = self._score_whole([ids[i] for i in long], self._starts([prefixes[i] for i in long]))
        work = [(i, *self._split(ids[i], prefixes[i])) for i in range(len(ids)) if len(ids[i]) <= self.max_len]
        work.sort(key=lambda w: (w[1].length if w[1] is not None else 0) + len(w[2]))  # alike lengths share a batch
        for start in range(0, len(work), self.batch_size):
            chunk = work[start:start + self.batch_size]
            scores, tails = self._score_after(chunk)
            for (i, prefix, _, _), s, tail in zip(chunk, scores, tails):
                out[i] = s
                self.cache.put(texts[i], ids[i], prefix.extend(tail) if prefix is not None else tail)
        return out

    def _starts(self, prefixes: Sequence[str | None]) -> list[int]:
        """Per text, the token index its scored step starts at (a log-prob head's span; the value head
        reads the last token whatever it is): its prefix's token count, or 1 without a prefix. The
        prefixes are tokenized in one batch."""
        if self.head != "logprob":
            return [1] * len(prefixes)
        known = [p for p in prefixes if p is not None]
        lengths = iter([len(r) for r in self.tokenizer.encode_batch(known)] if known else [])
        return [max(next(lengths), 1) if p is not None else 1 for p in prefixes]

    def _split(self, ids: list[int], prefix: str | None) -> tuple[PrefixKV | None, list[int], int]:
        """(cached keys/values of `prefix`, the tokens run after them, where the step starts among those
        tokens), or (None, all tokens, that start from `_starts`) on a miss: only a miss tokenizes its prefix. A
        log-prob head backs off one token on a hit: the prefix's last token runs again, its logits
        predicting the step's first token."""
        kv, new = self.cache.split(prefix, ids) if prefix is not None else (None, ids)
        if kv is None:
            return None, list(ids), self._starts([prefix])[0]
        if self.head == "logprob":
            return kv.first(kv.length - 1), list(ids[kv.length - 1:]), 1
        return kv, new, 1

    def _score_whole(self, ids: Sequence[Sequence[int]], starts: Sequence[int]) -> np.ndarray:
        """Whole rows (their last `max_len` tokens), right-padded, `batch_size` at a time."""
        starts = [max(s - max(len(r) - self.max_len, 0), 1) for r, s in zip(ids, starts)]
        ids = [row[-self.max_len:] for row in ids]
        self.tokens_scored += sum(len(r) for r in ids)
        out = np.zeros(len(ids), np.float32)
        pad = self.tokenizer.pad_id
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            rows = self._rows(len(chunk))
            width = bucket(max(len(r) for r in chunk), self.min_len)
            arr = np.full((rows, width), pad, np.int32)
            lengths = np.ones(rows, np.int32)
            first = np.ones(rows, np.int32)
            for i, r in enumerate(chunk):
                arr[i, : len(r)] = r
                lengths[i] = max(len(r), 1)
                first[i] = starts[start + i]
            out[start:start + len(chunk)] = np.asarray(self._scores(self.state, arr, lengths, first))[: len(chunk)]
        return out

    def _score_after(self, chunk) -> tuple[np.ndarray, list[PrefixKV]]:
        """Scores of (index, prefix keys/values or None, new tokens, step start) rows, run as new tokens
        after their prefixes in one padded batch, and each row's new-token keys/values."""
        items = [(prefix, new) for _, prefix, new, _ in chunk]
        p = bucket(max(prefix.length if prefix is not None else 0 for prefix, _ in items), self.min_len)
        t = bucket(max(len(new) for _, new in items), NEW_TOKENS_BUCKET)
        rows = row_bucket(len(chunk), ("ppm", p, t))  # a bigger row count already compiled is reused
        ids, positions, cache = pack_extension(items, rows, p, t, self.tokenizer.pad_id, self._kv_shape, self._kv_dtype)
        self.tokens_scored += sum(len(new) for _, new in items)
        starts = np.ones(rows, np.int32)
        starts[: len(chunk)] = [start for _, _, _, start in chunk]
        scores, new_k, new_v = jax.device_get(self._extend(self.state, ids, positions, cache, starts))
        tails = unpack_extension(new_k, new_v, items)
        return np.asarray(scores)[: len(chunk)], tails

    def _rows(self, n: int) -> int:
        """Rows a batch of `n` texts is padded to: a power of two below `batch_size`, else `batch_size`."""
        return bucket(n, 1) if n < self.batch_size else self.batch_size

"""The PPM as a step scorer for the search: texts in, tanh(r/5) step scores out, in padded buckets.

Rows are right-padded to a power-of-two length and the batch to a multiple of `batch_size`, so a
whole search compiles a handful of programs. Texts longer than `max_len` tokens keep their last
`max_len` tokens (the value head reads the last token; the newest steps matter most).
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from rstar_jax.generate import bucket
from rstar_jax.models import functional


class PPMScorer:
    """Scores prompt+response texts with a `Qwen2PPM` (see rstar_jax.mcts.search.StepScorer)."""

    def __init__(self, ppm, tokenizer, *, batch_size: int = 64, max_len: int = 4096, min_len: int = 64):
        self.tokenizer, self.batch_size, self.max_len, self.min_len = tokenizer, batch_size, max_len, min_len
        fn, self.state = functional(ppm, "scores")
        self._scores = jax.jit(fn)
        self.tokens_scored = 0

    def score(self, texts: Sequence[str]) -> np.ndarray:
        ids = [row[-self.max_len:] for row in self.tokenizer.encode_batch(list(texts))]
        self.tokens_scored += sum(len(r) for r in ids)
        out = np.zeros(len(ids), np.float32)
        pad = self.tokenizer.pad_id
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            rows = bucket(len(chunk), 1) if len(chunk) < self.batch_size else self.batch_size
            width = bucket(max(len(r) for r in chunk), self.min_len)
            arr = np.full((rows, width), pad, np.int32)
            lengths = np.ones(rows, np.int32)
            for i, r in enumerate(chunk):
                arr[i, : len(r)] = r
                lengths[i] = max(len(r), 1)
            out[start:start + len(chunk)] = np.asarray(self._scores(self.state, arr, lengths))[: len(chunk)]
        return out

"""grain input pipelines for the two trainers: packed SFT rows and PPM pair batches.

Every process builds the same global stream (same shuffle seed, same packing) and keeps only its own
contiguous slice of rows of each global batch. That costs each host the (cheap) host-side packing of
the whole stream, and buys two things: all hosts agree on the number of steps, and a run on P
processes sees exactly the batches of a run on one, so loss curves match across topologies.

SFT text = `build_prompt(query)` + response + EOS, prompt and response tokenized apart so the loss
mask boundary is exact; only response tokens and the EOS carry loss. Sequences are first-fit packed
into rows of `seq_len`; `segment_ids` (0 = padding) and `positions` keep packed examples apart.
A PPM pair is one row: prompt (the problem and the steps so far), positive step, negative step,
right-padded, with the three lengths (`Qwen2PPM.pair_rewards` scores each step after the prompt alone);
the prompt, most of a pair, is computed once instead of twice. An over-long pair keeps the end of its
prompt, so both steps survive. With `min_width`, each PPM batch is cut to the power-of-two bucket of
its longest row (at most `seq_len`): pairs are mostly far shorter than the longest, and a few buckets
cost a few compiles.
The iterators are grain DatasetIterators: `get_state()` / `set_state()` give the exact position,
which the trainers checkpoint with the model.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from absl import logging
from grain.experimental import FirstFitPackIterDataset, ThreadPrefetchIterDataset

from rstar_jax.data.selection import PPMPair, SFTExample
from rstar_jax.generate import bucket
from rstar_jax.steps import build_prompt

Batch = dict[str, np.ndarray]
SFT_FIELDS = ("inputs", "targets", "weights", "segment_ids", "positions")
PPM_FIELDS = ("ids", "prefix_len", "pos_len", "neg_len", "weight")


@dataclasses.dataclass(frozen=True)
class Shard:
    """Which slice of every global batch this process feeds (process `index` of `count`)."""

    index: int = 0
    count: int = 1

    def rows(self, global_rows: int) -> slice:
        if global_rows % self.count:
            raise ValueError(f"global batch of {global_rows} rows does not split over {self.count} processes")
        n = global_rows // self.count
        return slice(self.index * n, (self.index + 1) * n)


def split_holdout(items: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """A seeded (train, held-out) split; held-out gets round(fraction * n) items, at least one if fraction > 0."""
    n_eval = 0 if fraction <= 0 else max(1, round(fraction * len(items)))
    if n_eval >= len(items):
        raise ValueError(f"held-out fraction {fraction} leaves no training data out of {len(items)} items")
    order = np.random.default_rng(seed).permutation(len(items))
    held = set(order[:n_eval].tolist())
    return ([x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held])


# ----------------------------------------------------------------------------------------------
# SFT


def tokenize_sft(tokenizer, examples: Sequence[SFTExample], seq_len: int) -> list[dict[str, np.ndarray]]:
    """Per example: `inputs` (ids[:-1]), `targets` (ids[1:]) and `weights` (1 on response and EOS targets).

    Sequences longer than seq_len + 1 tokens are cut at the end; an example whose prompt alone fills
    the window has nothing to learn and is dropped. Both are counted in the log.
    """
    prompts = tokenizer.encode_batch([build_prompt(e.query) for e in examples])
    responses = tokenizer.encode_batch([e.response for e in examples])
    out, cut, dropped = [], 0, 0
    for p, r in zip(prompts, responses):
        ids = np.asarray(p + r + [tokenizer.eos_id], dtype=np.int32)
        if len(ids) > seq_len + 1:
            ids, cut = ids[: seq_len + 1], cut + 1
        if len(p) >= len(ids):
            dropped += 1
            continue
        weights = (np.arange(1, len(ids)) >= len(p)).astype(np.float32)
        out.append({"inputs": ids[:-1], "targets": ids[1:], "weights": weights})
    if cut or dropped:
        logging.warning("SFT tokenization: %d of %d examples cut to %d tokens, %d dropped (prompt fills the window)",
                        cut, len(examples), seq_len, dropped)
    if not out:
        raise ValueError(f"no SFT example fits seq_len={seq_len}")
    return out


def _finish_sft_batch(batch: Batch, rows: int, shard: Shard) -> Batch:
    """Renames grain's packing outputs, pads a short last batch with empty rows, keeps this process's rows."""
    out = {
        "inputs": batch["inputs"], "targets": batch["targets"], "weights": batch["weights"],
        "segment_ids": batch["inputs_segment_ids"], "positions": batch["inputs_positions"],
    }
    return {k: _pad_rows(v, rows)[shard.rows(rows)] for k, v in out.items()}


def _pad_rows(x: np.ndarray, rows: int, fill: float = 0) -> np.ndarray:
    if x.shape[0] == rows:
        return x
    pad = np.full((rows - x.shape[0],) + x.shape[1:], fill, dtype=x.dtype)
    return np.concatenate([x, pad])


def sft_dataset(tokenized: list[dict[str, np.ndarray]], *, seq_len: int, rows: int, epochs: int, seed: int,
                shard: Shard = Shard(), shuffle: bool = True, prefetch: int = 2) -> grain.IterDataset:
    """Packed SFT batches of `rows` global rows x `seq_len` (this process's slice), `epochs` passes.

    Each pass is reshuffled (seeded); grain's first-fit packer fills `rows` bins at a time, so every
    packer flush is one global batch.
    """
    ds = grain.MapDataset.source(tokenized)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(epochs).to_iter_dataset()
    length = {"inputs": seq_len, "targets": seq_len, "weights": seq_len}
    ds = FirstFitPackIterDataset(ds, length_struct=length, num_packing_bins=rows, shuffle_bins=False,
                                 meta_features=("targets", "weights"))
    ds = ds.batch(rows, drop_remainder=False).map(lambda b: _finish_sft_batch(b, rows, shard))
    return ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch) if prefetch else ds


# ----------------------------------------------------------------------------------------------
# PPM


def tokenize_ppm(tokenizer, pairs: Sequence[PPMPair], seq_len: int) -> list[dict[str, np.ndarray]]:
    """Per pair: the right-padded row prompt + pos + neg (`ids`), the three lengths (`prefix_len`, `pos_len`,
    `neg_len`) and the loss weight. A prompt too long for the row keeps its last tokens (at least one); a
    pair whose two steps alone fill `seq_len` is dropped, with a warning."""
    prompts = tokenizer.encode_batch([p.prompt for p in pairs])
    pos = tokenizer.encode_batch([p.pos for p in pairs])
    neg = tokenizer.encode_batch([p.neg for p in pairs])
    out, cut, dropped = [], 0, 0
    for pair, pr, a, b in zip(pairs, prompts, pos, neg):
        room = seq_len - len(a) - len(b)
        if room < 1 or not a or not b:
            dropped += 1
            continue
        cut += len(pr) > room
        prefix = pr[-room:] if pr else [tokenizer.pad_id]  # the first step token needs a token to follow
        ids = np.full(seq_len, tokenizer.pad_id, dtype=np.int32)
        row = prefix + a + b
        ids[: len(row)] = row
        out.append({"ids": ids, "prefix_len": np.int32(len(prefix)), "pos_len": np.int32(len(a)),
                    "neg_len": np.int32(len(b)), "weight": np.float32(pair.weight)})
    if cut:
        logging.warning("PPM tokenization: %d of %d pairs kept only the end of their prompt (seq_len %d)",
                        cut, len(pairs), seq_len)
    if dropped:
        logging.warning("PPM tokenization: dropped %d of %d pairs whose steps are empty or fill seq_len %d",
                        dropped, len(pairs), seq_len)
    return out


def _finish_ppm_batch(batch: Batch, rows: int, shard: Shard, min_width: int) -> Batch:
    """Pads a short last batch with zero-weight one-token pairs, cuts the global batch's padding columns
    to a bucket (`min_width` > 0; the same width on every process), keeps this process's rows."""
    fills = {"prefix_len": 1, "pos_len": 1, "neg_len": 1}
    if min_width:
        longest = int(np.max(batch["prefix_len"] + batch["pos_len"] + batch["neg_len"]))
        batch = {**batch, "ids": batch["ids"][:, :min(batch["ids"].shape[1], bucket(longest, min_width))]}
    return {k: _pad_rows(v, rows, fills.get(k, 0))[shard.rows(rows)] for k, v in batch.items()}


def ppm_dataset(tokenized: list[dict[str, np.ndarray]], *, rows: int, epochs: int, seed: int,
                shard: Shard = Shard(), shuffle: bool = True, prefetch: int = 2,
                min_width: int = 0, group: int = 0) -> grain.IterDataset:
    """Batches of `rows` global pairs (this process's slice), `epochs` seeded passes, last batch padded;
    `min_width` > 0 cuts each batch to the power-of-two bucket of its longest row (0: always seq_len);
    `group` > 0 draws batches of like lengths (`grouped_order`)."""
    if shuffle and group:
        lengths = np.array([t["prefix_len"] + t["pos_len"] + t["neg_len"] for t in tokenized])
        order = grouped_order(lengths, rows, epochs, seed, group)
        ds = grain.MapDataset.source(order).map(lambda i: tokenized[i])
    else:
        ds = grain.MapDataset.source(tokenized)
        ds = (ds.shuffle(seed=seed) if shuffle else ds).repeat(epochs)
    ds = ds.batch(rows, drop_remainder=False).map(lambda b: _finish_ppm_batch(b, rows, shard, min_width))
    ds = ds.to_iter_dataset()
    return ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch) if prefetch else ds


def grouped_order(lengths: np.ndarray, rows: int, epochs: int, seed: int, group: int) -> np.ndarray:
    """Item indices of `epochs` seeded shuffled passes, cut into runs of `group` batches of `rows`, each run
    sorted by length: a batch then holds like lengths and its width bucket wastes little. A run's batches
    come in a seeded random order; only the last run can end in a short batch, and it comes last."""
    rng = np.random.default_rng(seed)
    stream = np.concatenate([rng.permutation(len(lengths)) for _ in range(epochs)])
    out = []
    for start in range(0, len(stream), rows * group):
        run = stream[start:start + rows * group]
        run = run[np.argsort(lengths[run], kind="stable")]
        full = len(run) // rows
        out.extend(run[k * rows:(k + 1) * rows] for k in rng.permutation(full))
        out.append(run[full * rows:])
    return np.concatenate(out)


def count_batches(ds: grain.IterDataset) -> int:
    """Number of batches one full pass yields (the trainers size their schedules with it)."""
    return sum(1 for _ in ds)


def ppm_num_batches(num_pairs: int, rows: int, epochs: int) -> int:
    """Batches `ppm_dataset` yields, without iterating it."""
    return math.ceil(num_pairs * epochs / rows)

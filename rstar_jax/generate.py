"""Batched sampling engine: one prefill and a jitted `lax.while_loop` decode per call.

Shapes are bucketed (rows, prompt length, new tokens: powers of two) so a long MCTS run compiles a
handful of programs; every new program is logged and counted in `COMPILES`. Prompts are left-padded
and each row carries its own positions, so mixed lengths share one batch. `n` samples of a prompt
share one prefill: its KV cache is repeated, not recomputed. Each row draws from its own PRNG stream
(seed of its prompt, sample index, token index), so results do not depend on batch composition.

`generate_extending` continues prompts whose keys/values are already known (a `PrefixKV`, e.g. a
search node's path, kept from the call that decoded it): only the prompts without one are
prefilled, and every completion that ended on a stop token returns its own keys/values, so a tree's
path is never prefilled twice. Its prompt caches live on the host between calls.

Stop tokens end a row inside the device loop. Stop strings need text, so they are checked on the
host between decode chunks of `stop_check_every` tokens; the loop exits early once every row stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from rstar_jax import sharding
from rstar_jax.models.qwen2 import _MASKED, KVCache, Qwen2ForCausalLM, token_logprob

COMPILES: list[tuple] = []  # one entry per traced program: (name, shape key); tests and logs read it
ROW_REUSE = 1.5  # a call may run in an already compiled row bucket up to this many times its own
FINE_ROW_GRID = True  # row buckets at 1.5x powers of two as well (False: powers of two only)
_ROW_BUCKETS: dict[tuple, set[int]] = {}  # (prompt bucket, new bucket, n, shards, sampler) -> row buckets used so far

STOP_TOKEN, STOP_STRING, LENGTH = "stop_token", "stop_string", "length"


@dataclasses.dataclass
class Completion:
    """One sampled continuation: new tokens (ending at and including the stop), its text when a
    decoder was given, why it stopped, the summed model log-probability (temperature 1, unmasked)
    of its tokens, and how many prompt tokens were prefilled for it."""

    tokens: list[int]
    text: str | None
    stop_reason: str
    logprob: float
    prompt_tokens: int
    kv: "PrefixKV | None" = None  # generate_extending: the new tokens' keys/values when a stop token ended them

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)


@dataclasses.dataclass(frozen=True)
class PrefixKV:
    """Keys and values of a token sequence (per layer [kv_heads, length, head_dim], host arrays) and
    the fp32 logits of the token that follows it ([vocab]): all a decode needs to continue it. A
    PPM's prefix has no logits (None): its scorer only runs the tokens that follow."""

    k: tuple[np.ndarray, ...]
    v: tuple[np.ndarray, ...]
    logits: np.ndarray | None

    @property
    def length(self) -> int:
        return self.k[0].shape[1]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k + self.v) + (0 if self.logits is None else self.logits.nbytes)

    def first(self, n: int) -> "PrefixKV":
        """The keys/values of this sequence's first `n` tokens (no logits: the next token is unknown)."""
        return PrefixKV(tuple(a[:, :n] for a in self.k), tuple(a[:, :n] for a in self.v), None)

    def extend(self, tail: "PrefixKV") -> "PrefixKV":
        """This sequence followed by `tail` (whose keys/values sit at the positions after this one)."""
        cat = lambda a, b: tuple(np.concatenate([x, y], axis=1) for x, y in zip(a, b))
        return PrefixKV(cat(self.k, tail.k), cat(self.v, tail.v), tail.logits)


class PrefixCache:
    """Prompt text -> (its token ids, PrefixKV); least recently used first out once the stored bytes
    pass `budget`."""

    def __init__(self, budget: int):
        self.budget = budget
        self.bytes = 0
        self._items: OrderedDict[str, tuple[list[int], PrefixKV]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, text: str) -> tuple[list[int], PrefixKV] | None:
        hit = self._items.get(text)
        if hit is not None:
            self._items.move_to_end(text)
        return hit

    def split(self, text: str, ids: Sequence[int]) -> tuple[PrefixKV | None, list[int]]:
        """(keys/values cached for `text`, the tokens of `ids` after them) when `ids` starts with that
        entry's tokens and goes on past them, else (None, all of `ids`): a hit then computes what the
        whole of `ids` would."""
        hit = self.get(text)
        if hit is not None and len(hit[0]) < len(ids) and list(ids[: len(hit[0])]) == hit[0]:
            return hit[1], list(ids[len(hit[0]):])
        return None, list(ids)

    def put(self, text: str, ids: list[int], kv: PrefixKV) -> None:
        old = self._items.pop(text, None)
        if old is not None:
            self.bytes -= old[1].nbytes
        if kv.nbytes > self.budget:
            return
        self._items[text] = (ids, kv)
        self.bytes += kv.nbytes
        while self.bytes > self.budget:
            _, (_, dropped) = self._items.popitem(last=False)
            self.bytes -= dropped.nbytes


def pack_extension(items: Sequence[tuple[PrefixKV | None, Sequence[int]]], rows: int, prefix_len: int, new_len: int,
                   pad_id: int, kv_shape: tuple[int, int, int], dtype) -> tuple[np.ndarray, np.ndarray, KVCache]:
    """One batch of (known prefix or None, new tokens) rows for a forward that runs only the new tokens:
    ids and positions [rows, new_len] (-1 = padding) and a host KVCache of [rows, prefix_len + new_len]
    slots whose first ones hold each prefix (the new tokens' keys/values go after prefix_len).
    kv_shape is the model's (layers, kv_heads, head_dim)."""
    layers, kv_heads, head_dim = kv_shape
    k = [np.zeros((rows, prefix_len + new_len, kv_heads, head_dim), dtype) for _ in range(layers)]
    v = [np.zeros_like(a) for a in k]
    pos = np.full((rows, prefix_len + new_len), -1, np.int32)
    ids = np.full((rows, new_len), pad_id, np.int32)
    positions = np.full((rows, new_len), -1, np.int32)
    for j, (prefix, new) in enumerate(items):
        n0 = prefix.length if prefix is not None else 0
        if prefix is not None:
            for layer in range(layers):  # PrefixKV holds [kv_heads, length, head_dim]
                k[layer][j, :n0] = prefix.k[layer].transpose(1, 0, 2)
                v[layer][j, :n0] = prefix.v[layer].transpose(1, 0, 2)
            pos[j, :n0] = np.arange(n0)
        ids[j, : len(new)] = new
        positions[j, : len(new)] = np.arange(n0, n0 + len(new))
    return ids, positions, KVCache(k=k, v=v, pos=pos)


def unpack_extension(new_k: Sequence[np.ndarray], new_v: Sequence[np.ndarray], items, logits=None) -> list[PrefixKV]:
    """Each row's new tokens' keys/values (from [rows, new_len, kv_heads, head_dim] per layer) as a
    PrefixKV to `extend` its prefix with; `logits` [rows, vocab] are the ones after its last new token."""
    return [PrefixKV(tuple(a[j, : len(new)].transpose(1, 0, 2) for a in new_k),
                     tuple(a[j, : len(new)].transpose(1, 0, 2) for a in new_v),
                     None if logits is None else logits[j])
            for j, (_, new) in enumerate(items)]


def bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


def row_grid(n: int) -> int:
    """Smallest of 1, 2, 3, 4, 6, 8, 12, 16, 24, ... (powers of two and 1.5 times them) >= n: padded to
    it, a batch is at most a third filler rows (a power of two alone allows half)."""
    p = bucket(n, 1)
    return p * 3 // 4 if FINE_ROW_GRID and p >= 4 and p * 3 // 4 >= n else p


def row_bucket(rows: int, shape: tuple, shards: int = 1) -> int:
    """Rows to pad a call to: the smallest row bucket already used with the same other shapes when it
    is at most ROW_REUSE times the call's own (`row_grid`), else a new one. Filler rows cost what live
    ones do: padding to powers of two and reusing up to 4x made 37% of a demo search's decoded
    row-steps filler; this grid and 1.5x reuse cut that to 17% and the search's decode time by 1.31x
    once compiled, at more programs to compile (~1 s each on CPU; benchmarks/bench_padding.py)."""
    own = -(-row_grid(rows) // shards) * shards
    used = _ROW_BUCKETS.setdefault(shape, set())
    reuse = [r for r in used if own <= r <= ROW_REUSE * own]
    pick = min(reuse) if reuse else own
    used.add(pick)
    return pick


# ---------------------------------------------------------------- sampling (pure, per row)


TOP_P_CANDIDATES = 32  # top-p looks for its cut among this many best tokens first (a full sort only when needed)


def _top_p_threshold(desc: jax.Array, scaled: jax.Array, top_k: jax.Array, top_p: jax.Array):
    """Smallest logit kept by top-k then top-p, from `desc` = the best logits in descending order
    (all of them, or only the first few); also whether that answer is exact (the cut fell inside
    `desc`, or top-k already stops there). The softmax normaliser always covers every top-k token."""
    v, width = scaled.shape[-1], desc.shape[-1]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    in_k = jnp.arange(width)[None] < k[:, None]
    top = desc[:, :1]
    z = jnp.sum(jnp.where(in_k, jnp.exp(desc - top), 0.0), axis=-1, keepdims=True)
    if width < v:  # without top-k (or with one past `desc`) the normaliser spans the whole vocabulary
        z = jnp.where((k <= width)[:, None], z, jnp.sum(jnp.exp(scaled - top), axis=-1, keepdims=True))
    probs = jnp.where(in_k, jnp.exp(desc - top) / z, 0.0)
    keep = ((jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]) & in_k  # always keeps the best token
    kept = jnp.sum(keep, axis=-1)
    threshold = jnp.take_along_axis(desc, (kept - 1)[:, None], axis=-1)
    # exact: top-k stops inside `desc`, or (no top-k) top-p stops inside it
    exact = (k <= width) | ((top_k == 0) & (kept < width))
    return threshold, exact


def _cut(logits: jax.Array, top_k: jax.Array, top_p: jax.Array):
    """(threshold [B, 1], best [B, W] logits descending, their token ids [B, W]) for top-k then top-p:
    a token is kept iff its logit >= threshold.

    The cut is looked for among the W = TOP_P_CANDIDATES best logits (`lax.top_k`, cheap); only when
    some row's cut lies beyond them (a flat distribution, or top-k larger than W) is the full
    vocabulary sorted, and only those rows take its answer. Which path a row takes depends on that
    row alone, so results never depend on the batch."""
    v = logits.shape[-1]
    width = min(TOP_P_CANDIDATES, v)
    # The barriers keep XLA (CPU) from turning top_k into a full sort when fusing it with its users.
    best, ids = jax.lax.optimization_barrier(jax.lax.top_k(jax.lax.optimization_barrier(logits), width))
    threshold, exact = _top_p_threshold(best, logits, top_k, top_p)
    if width < v:
        full = lambda: _top_p_threshold(-jnp.sort(-logits, axis=-1), logits, top_k, top_p)[0]
        slow = jax.lax.cond(jnp.all(exact), lambda: threshold, full)
        threshold = jnp.where(exact[:, None], threshold, slow)
    return threshold, best, ids


def mask_top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the `top_k` largest logits (0 = all) and, of those, the smallest set whose probability
    reaches `top_p`; the rest become -inf. logits [B, V], top_k/top_p [B]."""
    threshold = _cut(logits, top_k, top_p)[0]
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sampler_for(temperature: float, top_k: int, top_p: float) -> str:
    """The smallest sampler that serves a call whose rows all use these settings: a decode program
    holds only that one (the top-k / top-p machinery alone more than doubles a CPU compile)."""
    if temperature == 0:
        return "greedy"
    return "plain" if top_k == 0 and top_p >= 1.0 else "masked"


def first_argmax(logits: jax.Array) -> jax.Array:
    """Index of each row's largest logit (the first on ties), as jnp.argmax gives it. A max and a min
    reduce: XLA's CPU argmax is a variadic reduce several times slower in the decode loop."""
    top = jnp.max(logits, axis=-1, keepdims=True)
    return jnp.min(jnp.where(logits == top, jnp.arange(logits.shape[-1]), logits.shape[-1]), axis=-1).astype(jnp.int32)


def categorical(keys: jax.Array, logits: jax.Array, block: int = 32) -> jax.Array:
    """One draw per row from softmax(logits), each with its own key [B]: the row's CDF is inverted at
    one uniform, first over blocks of `block` tokens, then inside the chosen block. Gumbel-max needs
    a random number per vocabulary entry and an argmax, a fifth of a CPU decode call with them
    (benchmarks/bench_decode_step.py). A token whose probability is zero (a -inf logit) is never drawn."""
    b, v = logits.shape
    nb = -(-v // block)
    p = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    p = jnp.pad(p, ((0, 0), (0, nb * block - v))).reshape(b, nb, block)

    def pick(cum: jax.Array, u: jax.Array) -> jax.Array:
        # first index whose cumulative mass exceeds u, clipped to the last index that adds mass
        return jnp.minimum(jnp.sum(cum <= u[:, None], axis=-1), jnp.sum(cum < cum[:, -1:], axis=-1))

    block_mass = jnp.sum(p, axis=-1)
    cum_blocks = jnp.cumsum(block_mass, axis=-1)
    u = jax.vmap(jax.random.uniform)(keys) * cum_blocks[:, -1]
    j = pick(cum_blocks, u)
    before = jnp.take_along_axis(cum_blocks - block_mass, j[:, None], axis=-1)[:, 0]
    inside = jnp.cumsum(jnp.take_along_axis(p, j[:, None, None], axis=1)[:, 0], axis=-1)
    return (j * block + pick(inside, jnp.maximum(u - before, 0.0))).astype(jnp.int32)


def sample(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array, sampler: str = "masked") -> jax.Array:
    """Next token per row: argmax where temperature == 0, else a draw from softmax(logits / T)
    restricted by top-k / top-p. Each row uses only its own key.

    A row whose kept tokens all lie among its TOP_P_CANDIDATES best draws among those alone (the same
    distribution, a 16x smaller draw); other rows draw over the whole masked vocabulary. `sampler`
    (static) may drop what no row needs: "greedy" (every temperature is 0), "plain" (no top-k /
    top-p); each gives exactly the tokens "masked" gives for such rows."""
    greedy = first_argmax(logits)
    if sampler == "greedy":
        return greedy
    if sampler == "plain":
        return categorical(keys, logits / jnp.maximum(temperature, 1e-6)[:, None])

    def draw(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]

        def masked_draw(_):
            threshold, best, ids = _cut(scaled, top_k, top_p)
            narrow = threshold[:, 0] > best[:, -1]  # nothing outside `best` reaches the threshold
            j = categorical(keys, jnp.where(best >= threshold, best, -jnp.inf))
            tok = jnp.take_along_axis(ids, j[:, None], axis=-1)[:, 0]
            wide = lambda: categorical(keys, jnp.where(scaled >= threshold, scaled, -jnp.inf))
            other = jax.lax.cond(jnp.all(narrow), lambda: tok, wide)
            return jnp.where(narrow, tok, other).astype(jnp.int32)

        needs_mask = jnp.any((top_k > 0) | (top_p < 1.0))
        drawn = jax.lax.cond(needs_mask, masked_draw, lambda _: categorical(keys, scaled), None)
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy, None)


# ---------------------------------------------------------------- device programs


def _log_compile(name: str, key: tuple) -> None:
    COMPILES.append((name, key))
    logging.info("generate: compiling %s for %s (%d programs so far)", name, key, len(COMPILES))


@functools.partial(jax.jit, static_argnames=("graphdef", "n"))
def _prefill(graphdef, state, ids, positions, seeds, n: int):
    """Prefill of [B, P] left-padded prompts. Returns the last-position logits of each of the B*n rows
    (prompt-major), the prompt cache ONCE per prompt (keys/values per layer as [B, kv_heads, P,
    head_dim], the layout decode attention reads without a transpose, and which slots hold tokens),
    and the PRNG key of each row: key(seed of its prompt; seeds [B, 2] = low, high 32 bits) folded
    with its sample index. The n samples of a prompt read its cache in place, never a copy of it."""
    _log_compile("prefill", (ids.shape, n))
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    cache = model.init_cache(b, p)
    logits, cache = model.forward_cached(ids, positions, cache, 0, last_only=True)
    to_heads = lambda x: jnp.transpose(x, (0, 2, 1, 3))
    prompt = dict(k=[to_heads(k) for k in cache.k], v=[to_heads(v) for v in cache.v], visible=cache.pos >= 0)
    return jnp.repeat(logits, n, axis=0), prompt, _row_keys(seeds, n)


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _extend(graphdef, state, ids, positions, cache: KVCache, last):
    """Runs right-padded new tokens [B, T] after the prefixes in `cache` (slots before S - T). Returns
    the fp32 logits after each row's token `last` [B] and the new tokens' keys/values per layer."""
    _log_compile("extend", (ids.shape, cache.length))
    model = nnx.merge(graphdef, state)
    p = cache.length - ids.shape[1]
    h, cache = model.model.hidden_cached(model.config, ids, positions, cache, p, model.dtype)
    h_last = jnp.take_along_axis(h, last[:, None, None], axis=1)[:, 0]
    return (model.logits(h_last).astype(jnp.float32), [k[:, p:] for k in cache.k], [v[:, p:] for v in cache.v])


def _row_keys(seeds, n: int):
    """PRNG key of each of the B*n rows (prompt-major): key(seed of its prompt; seeds [B, 2] = low,
    high 32 bits) folded with its sample index."""
    base = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s[0]), s[1]))(seeds)
    return jax.vmap(jax.random.fold_in)(jnp.repeat(base, n, axis=0), jnp.tile(jnp.arange(n), seeds.shape[0]))


_row_keys_jit = jax.jit(_row_keys, static_argnames=("n",))


def _attend_shared(q, prompt_k, prompt_v, prompt_visible, new_k, new_v, step):
    """Attention of one new token per row over its prompt's cache (shared by the prompt's n rows)
    and the row's own new tokens (slots 0..step), as one softmax over both parts.

    q [R, 1, H, D] with R = B * n rows, prompt-major; prompt_k/v [B, K, P, D]; prompt_visible [B, P];
    new_k/v [R, K, T, D] (slot `step` already written). Returns [R, 1, H, D]."""
    r, _, h, d = q.shape
    b, kv, _, _ = prompt_k.shape
    n, g, t = r // b, h // kv, new_k.shape[2]
    scale = d ** -0.5
    q_shared = q.reshape(b, n, kv, g, d)
    s1 = jnp.einsum("bnkgd,bksd->bnkgs", q_shared, prompt_k, preferred_element_type=jnp.float32) * scale
    s1 = jnp.where(prompt_visible[:, None, None, None, :], s1, _MASKED)
    # A row's own tokens: a product per row, which XLA's CPU dot runs as r*kv tiny matmuls; as a
    # multiply and a sum the demo's decode call runs 1.16x faster (benchmarks/bench_decode_step.py).
    f32 = lambda a: a.astype(jnp.float32)
    s2 = jnp.sum(f32(q.reshape(r, kv, g, 1, d)) * f32(new_k[:, :, None]), axis=-1) * scale
    s2 = jnp.where(jnp.arange(t) <= step, s2, _MASKED).reshape(b, n, kv, g, t)
    top = jnp.maximum(jnp.max(s1, axis=-1, keepdims=True), jnp.max(s2, axis=-1, keepdims=True))
    e1, e2 = jnp.exp(s1 - top), jnp.exp(s2 - top)
    z = jnp.sum(e1, axis=-1, keepdims=True) + jnp.sum(e2, axis=-1, keepdims=True)
    p1, p2 = (e1 / z).astype(prompt_v.dtype), e2 / z
    o = jnp.einsum("bnkgs,bksd->bnkgd", p1, prompt_v, preferred_element_type=jnp.float32).reshape(r, kv, g, d)
    o = o + jnp.sum(p2.reshape(r, kv, g, t, 1) * f32(new_v[:, :, None]), axis=-2)
    return o.reshape(r, 1, h, d).astype(q.dtype)


def _decode_forward(model: Qwen2ForCausalLM, tok, positions, prompt: dict, new_k: list, new_v: list, step):
    """The model's forward for one new token per row (its own layer loop and head), with the
    shared-prompt attention above. Returns fp32 logits [R, V] and the new-token caches with this
    token's keys/values written at slot `step`."""
    dtype = model.dtype
    to_heads = lambda a, like: jnp.transpose(a, (0, 2, 1, 3)).astype(like.dtype)

    def attend_step(i, q, k, v):
        nk = jax.lax.dynamic_update_slice(new_k[i], to_heads(k, new_k[i]), (0, 0, step, 0))
        nv = jax.lax.dynamic_update_slice(new_v[i], to_heads(v, new_v[i]), (0, 0, step, 0))
        o = _attend_shared(q, prompt["k"][i].astype(dtype), prompt["v"][i].astype(dtype), prompt["visible"],
                           nk.astype(dtype), nv.astype(dtype), step)
        return o, (nk, nv)

    h, kv = model.model.run(model.config, tok[:, None], positions[:, None], dtype, attend_step)
    return model.logits(h[:, -1]), [k for k, _ in kv], [v for _, v in kv]


@functools.partial(jax.jit, static_argnames=("graphdef", "sampler"), donate_argnames=("carry",))
def _decode(graphdef, state, carry: dict, prompt: dict, stop_ids, temperature, top_k, top_p, until, sampler: str):
    """Runs the decode loop from carry["step"] until step == `until` or every row is done; exits as
    soon as every row has stopped (no step is spent on finished batches)."""
    _log_compile("decode", (carry["tokens"].shape, prompt["visible"].shape, sampler, "after_stop" in carry))
    model = nnx.merge(graphdef, state)

    def cond(c):
        return (c["step"] < until) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]
        keys = jax.vmap(jax.random.fold_in, (0, None))(c["keys"], step)
        tok = sample(c["logits"], keys, temperature, top_k, top_p, sampler)
        tok = jnp.where(c["done"], 0, tok)
        logp = token_logprob(c["logits"], tok)[:, None]
        logps = jax.lax.dynamic_update_slice(c["logps"], logp, (0, step))
        length = c["length"] + (~c["done"]).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice(c["tokens"], tok[:, None], (0, step))
        hit = ~c["done"] & jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        done = c["done"] | hit
        # Rows already done compute garbage from here on; nothing of it is read.
        logits, new_k, new_v = _decode_forward(model, tok, c["prompt_len"] + step, prompt, c["new_k"], c["new_v"],
                                               step)
        out = dict(c, step=step + 1, tokens=tokens, done=done, length=length, logps=logps,
                   logits=logits, new_k=new_k, new_v=new_v, stopped=c["stopped"] | hit)
        if "after_stop" in c:  # generate_extending: what follows a stop token, so continuing the row needs no prefill
            out["after_stop"] = jnp.where(hit[:, None], logits, c["after_stop"])
        return out

    return jax.lax.while_loop(cond, body, carry)


# ---------------------------------------------------------------- host driver


def _find_stop(text: str, stop_strings: Sequence[str]) -> int:
    """End offset of the earliest stop string in `text`, or -1."""
    ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
    return min(ends) if ends else -1


def _left_pad(prompts: Sequence[Sequence[int]], p_pad: int, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, positions, lengths) of `prompts` left-padded to [rows, p_pad]; padding has position -1, and
    filler rows past the prompts hold one token at position 0 (done from the start)."""
    ids = np.zeros((rows, p_pad), np.int32)
    positions = np.full((rows, p_pad), -1, np.int32)
    lens = np.ones(rows, np.int32)
    for i, p in enumerate(prompts):
        ids[i, p_pad - len(p):] = p
        positions[i, p_pad - len(p):] = np.arange(len(p))
        lens[i] = len(p)
    positions[len(prompts):, -1] = 0
    return ids, positions, lens


def _seed_words(seeds: Sequence[int], rows: int) -> np.ndarray:
    """[rows, 2] uint32 (low, high 32 bits) of each prompt's seed; filler rows get 0."""
    words = np.zeros((rows, 2), np.uint32)
    words[: len(seeds), 0] = [s & 0xFFFFFFFF for s in seeds]
    words[: len(seeds), 1] = [(s >> 32) & 0xFFFFFFFF for s in seeds]
    return words


def _cut_at_stop(tokens: list[int], decode: Callable[[list[int]], str], stop_strings) -> tuple[list[int], str] | None:
    """The shortest token prefix whose text contains a stop string, and that text cut right after the
    stop string (which may start or end inside a token); None when no stop string occurs."""
    end = _find_stop(decode(tokens), stop_strings)
    if end < 0:
        return None
    lo, hi = 1, len(tokens)
    while lo < hi:  # texts of prefixes grow monotonically in what they contain
        mid = (lo + hi) // 2
        if _find_stop(decode(tokens[:mid]), stop_strings) >= 0:
            hi = mid
        else:
            lo = mid + 1
    text = decode(tokens[:lo])
    return tokens[:lo], text[: _find_stop(text, stop_strings)]


class Generator:
    """Sampling engine over one model. `generate` is the rich API (text, stop strings, log-probs,
    per-prompt seeds); `generate_tokens` below is the plain one.

    With a mesh, the parameters are placed by the sharding rules and the batch is split over the
    mesh's (data, fsdp) axes (rows are padded to a multiple of those shards).
    """

    def __init__(self, model: Qwen2ForCausalLM, *, mesh: jax.sharding.Mesh | None = None,
                 stop_check_every: int = 32, min_prompt_bucket: int = 16, min_new_bucket: int = 16):
        self.graphdef, state = nnx.split(model)
        self.mesh = mesh
        self.state = jax.device_put(state, sharding.state_shardings(state, mesh)) if mesh is not None else state
        self.vocab_size = model.config.vocab_size
        self._layers, self._kv_heads = model.config.num_hidden_layers, model.config.num_key_value_heads
        self._head_dim, self._kv_dtype = model.config.head_dim, model.dtype
        self.stop_check_every = stop_check_every
        self.min_prompt_bucket = min_prompt_bucket
        self.min_new_bucket = min_new_bucket

    def _mesh_context(self):
        return jax.set_mesh(self.mesh) if self.mesh is not None else contextlib.nullcontext()

    def _put(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        return jax.device_put(x, sharding.batch_sharding(self.mesh, x.ndim, x.shape[0]))

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, n: int = 1,
                 temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, stop_token_ids: Sequence[int] = (),
                 stop_strings: Sequence[str] = (), decode: Callable[[list[int]], str] | Any = None,
                 seed: int = 0, seeds: Sequence[int] | None = None) -> list[Completion]:
        """`n` completions per prompt, prompt-major. `decode` is a function ids -> text or an object
        with `.decode(ids)` (needed for stop strings and for `Completion.text`); `seeds` gives one
        seed per prompt (default: `seed` for all)."""
        if not prompts:
            return []
        self._check_prompts(prompts)
        seeds = self._check_call(len(prompts), max_new_tokens, n, temperature, top_p, top_k, seed, seeds)
        decode_fn = getattr(decode, "decode", decode)
        if stop_strings and decode_fn is None:
            raise ValueError("generate: stop_strings need `decode` (a tokenizer or a function ids -> text)")
        b = len(prompts)
        p_pad = bucket(max(len(p) for p in prompts), self.min_prompt_bucket)
        new_pad = bucket(max_new_tokens, self.min_new_bucket)
        b_pad = row_bucket(b, (p_pad, new_pad, n, self._shards, sampler_for(temperature, top_k, top_p)), self._shards)
        ids, positions, lens = _left_pad(prompts, p_pad, b_pad)
        with self._mesh_context():
            logits, prompt, keys = _prefill(self.graphdef, self.state, self._put(ids), self._put(positions),
                                            self._put(_seed_words(seeds, b_pad)), n)
        final, cut = self._decode_rows(logits, prompt, keys, lens, b, n, new_pad, max_new_tokens,
                                       dict(temperature=temperature, top_k=top_k, top_p=top_p), stop_token_ids,
                                       stop_strings, decode_fn)
        return [self._completion(i, final, cut, decode_fn, int(lens[i // n]), stop_strings) for i in range(b * n)]

    def generate_extending(self, prompts: Sequence[Sequence[int] | None], prefixes: Sequence[PrefixKV | None],
                           max_new_tokens: int, *, n: int = 1, temperature: float = 0.0, top_p: float = 1.0,
                           top_k: int = 0, stop_token_ids: Sequence[int] = (), decode: Any = None,
                           seeds: Sequence[int] | None = None) -> tuple[list[Completion], list[PrefixKV]]:
        """`generate` (stop tokens only) for prompts of which some are already known as a `PrefixKV`
        (prompt i is `prefixes[i]` when given, else the token ids `prompts[i]`, which are prefilled).

        Returns the completions, each with `.kv` = its new tokens' keys/values and the logits after its
        stop token (None when it ran out of tokens), and every prompt's PrefixKV, so a caller can
        continue any of them, or prompt + completion (`PrefixKV.extend`), without a prefill. Sampling
        from a PrefixKV gives the same tokens as from its ids, up to float rounding."""
        if len(prompts) != len(prefixes):
            raise ValueError(f"generate_extending: {len(prompts)} prompts for {len(prefixes)} prefixes")
        if not prompts:
            return [], []
        missing = [i for i, kv in enumerate(prefixes) if kv is None]
        self._check_prompts([prompts[i] for i in missing])
        seeds = self._check_call(len(prompts), max_new_tokens, n, temperature, top_p, top_k, 0, seeds)
        decode_fn = getattr(decode, "decode", decode)
        known = list(prefixes)
        if missing:  # prefilled alone (greedy, one new token: only their keys/values and last logits are kept)
            filled = self._prompt_kv([prompts[i] for i in missing])
            for i, kv in zip(missing, filled):
                known[i] = kv
        b = len(known)
        p_pad = bucket(max(kv.length for kv in known), self.min_prompt_bucket)
        new_pad = bucket(max_new_tokens, self.min_new_bucket)
        b_pad = row_bucket(b, (p_pad, new_pad, n, self._shards, sampler_for(temperature, top_k, top_p)), self._shards)
        k_pad = lambda: np.zeros((b_pad, self._kv_heads, p_pad, self._head_dim), self._kv_dtype)
        pk, pv = [k_pad() for _ in range(self._layers)], [k_pad() for _ in range(self._layers)]
        visible = np.zeros((b_pad, p_pad), bool)
        visible[b:, -1] = True  # filler rows: one visible slot, done from the start
        logits = np.zeros((b_pad, self.vocab_size), np.float32)
        lens = np.ones(b_pad, np.int32)
        for i, kv in enumerate(known):
            for layer in range(self._layers):
                pk[layer][i, :, p_pad - kv.length:] = kv.k[layer]
                pv[layer][i, :, p_pad - kv.length:] = kv.v[layer]
            visible[i, p_pad - kv.length:] = True
            logits[i] = kv.logits
            lens[i] = kv.length
        prompt = dict(k=[self._put(x) for x in pk], v=[self._put(x) for x in pv], visible=self._put(visible))
        with self._mesh_context():
            keys = _row_keys_jit(self._put(_seed_words(seeds, b_pad)), n)
        final, _ = self._decode_rows(self._put(np.repeat(logits, n, axis=0)), prompt, keys, lens, b, n, new_pad,
                                     max_new_tokens, dict(temperature=temperature, top_k=top_k, top_p=top_p),
                                     stop_token_ids, (), decode_fn, with_kv=True)
        out = []
        for i in range(b * n):
            c = self._completion(i, final, {}, decode_fn, int(lens[i // n]), ())
            if c.stop_reason == STOP_TOKEN:
                t = len(c.tokens)
                c.kv = PrefixKV(tuple(k[i, :, :t] for k in final["new_k"]), tuple(v[i, :, :t] for v in final["new_v"]),
                                final["after_stop"][i])
            out.append(c)
        return out, known

    def extend_kv(self, prefixes: Sequence[PrefixKV], tails: Sequence[Sequence[int]]) -> list[PrefixKV]:
        """Each prefix followed by its (non-empty) tail tokens, with the logits after the tail: one forward
        over the tails only, so text appended to a cached path (a program's output) needs no prefill of it."""
        if len(prefixes) != len(tails) or any(len(t) == 0 for t in tails):
            raise ValueError(f"extend_kv: {len(prefixes)} prefixes for {len(tails)} tails, all non-empty")
        if not prefixes:
            return []
        self._check_prompts(tails)
        items = list(zip(prefixes, tails))
        p = bucket(max(kv.length for kv in prefixes), self.min_prompt_bucket)
        t = bucket(max(len(x) for x in tails), self.min_new_bucket)
        rows = row_bucket(len(items), ("extend", p, t, self._shards), self._shards)
        ids, positions, cache = pack_extension(items, rows, p, t, 0, (self._layers, self._kv_heads, self._head_dim),
                                               self._kv_dtype)
        last = np.zeros(rows, np.int32)
        last[: len(tails)] = [len(x) - 1 for x in tails]
        cache = KVCache(k=[self._put(a) for a in cache.k], v=[self._put(a) for a in cache.v], pos=self._put(cache.pos))
        with self._mesh_context():
            out = _extend(self.graphdef, self.state, self._put(ids), self._put(positions), cache, self._put(last))
        logits, new_k, new_v = jax.device_get(out)
        return [prefix.extend(tail) for prefix, tail in zip(prefixes, unpack_extension(new_k, new_v, items, logits))]

    def _prompt_kv(self, prompts: Sequence[Sequence[int]]) -> list[PrefixKV]:
        """Each prompt's keys/values and last logits, from one prefill (host arrays)."""
        b = len(prompts)
        p_pad = bucket(max(len(p) for p in prompts), self.min_prompt_bucket)
        b_pad = row_bucket(b, (p_pad, 0, 1, self._shards), self._shards)
        ids, positions, _ = _left_pad(prompts, p_pad, b_pad)
        with self._mesh_context():
            logits, prompt, _ = _prefill(self.graphdef, self.state, self._put(ids), self._put(positions),
                                         self._put(np.zeros((b_pad, 2), np.uint32)), 1)
        host = jax.device_get(dict(logits=logits, k=prompt["k"], v=prompt["v"]))
        return [PrefixKV(tuple(k[i, :, p_pad - len(p):] for k in host["k"]),
                         tuple(v[i, :, p_pad - len(p):] for v in host["v"]), host["logits"][i])
                for i, p in enumerate(prompts)]

    def _check_prompts(self, prompts: Sequence[Sequence[int]]) -> None:
        if any(p is None or len(p) == 0 for p in prompts):
            raise ValueError(f"generate: prompt {[0 if p is None else len(p) for p in prompts].index(0)} is empty")
        bad = [t for p in prompts for t in p if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"generate: token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")

    @staticmethod
    def _check_call(b: int, max_new_tokens: int, n: int, temperature: float, top_p: float, top_k: int, seed: int,
                    seeds: Sequence[int] | None) -> list[int]:
        """Validates a call's settings; returns one seed per prompt."""
        if max_new_tokens < 1 or n < 1:
            raise ValueError(f"generate: max_new_tokens={max_new_tokens} and n={n} must be >= 1")
        if not (0.0 < top_p <= 1.0) or top_k < 0 or temperature < 0:
            raise ValueError(f"generate: bad sampling settings temperature={temperature} top_p={top_p} top_k={top_k}")
        seeds = list(seeds) if seeds is not None else [seed] * b
        if len(seeds) != b:
            raise ValueError(f"generate: {len(seeds)} seeds for {b} prompts")
        return seeds

    @property
    def _shards(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]

    def _decode_rows(self, logits, prompt, keys, lens, b, n, new_pad, max_new_tokens, sampling, stop_token_ids,
                     stop_strings, decode_fn, with_kv: bool = False):
        """Decodes the b*n rows (of b_pad*n) from their first logits; returns the host results and the
        stop-string cuts."""
        rows = lens.shape[0] * n
        # Each row's own tokens get their own small cache [rows, kv_heads, new_pad, head_dim] per layer.
        kv_shape = (rows, self._kv_heads, new_pad, self._head_dim)
        new_cache = lambda: [self._put(np.zeros(kv_shape, self._kv_dtype)) for _ in range(self._layers)]
        new_k, new_v = new_cache(), new_cache()
        done = np.zeros(rows, bool)
        done[b * n:] = True
        carry = dict(step=jnp.int32(0), tokens=self._put(np.zeros((rows, new_pad), np.int32)), done=self._put(done),
                     stopped=self._put(np.zeros(rows, bool)), length=self._put(np.zeros(rows, np.int32)),
                     logps=self._put(np.zeros((rows, new_pad), np.float32)), logits=logits, new_k=new_k, new_v=new_v,
                     prompt_len=self._put(np.repeat(lens, n)), keys=keys)
        if with_kv:
            carry["after_stop"] = self._put(np.zeros((rows, self.vocab_size), np.float32))
        stop_ids = jnp.asarray(list(stop_token_ids) or [-1], jnp.int32)
        row = lambda x, dt: self._put(np.full(rows, x, dt))
        temp, tk, tp = (row(sampling["temperature"], np.float32), row(sampling["top_k"], np.int32),
                        row(sampling["top_p"], np.float32))
        chunk = self.stop_check_every if stop_strings else max_new_tokens
        cut: dict[int, tuple[list[int], str]] = {}
        while True:
            until = min(int(carry["step"]) + chunk, max_new_tokens)
            with self._mesh_context():
                carry = _decode(self.graphdef, self.state, carry, prompt, stop_ids, temp, tk, tp, jnp.int32(until),
                                sampler_for(sampling["temperature"], sampling["top_k"], sampling["top_p"]))
            host = jax.device_get({k: carry[k] for k in ("tokens", "done", "length")})
            if stop_strings:
                newly = self._stop_string_hits(host, b * n, cut, decode_fn, stop_strings)
                if newly:
                    carry["done"] = self._put(host["done"] | np.isin(np.arange(rows), newly))
                    host["done"] = np.asarray(jax.device_get(carry["done"]))
            if host["done"].all() or until >= max_new_tokens:
                break
        fields = ("tokens", "length", "logps", "stopped") + (("new_k", "new_v", "after_stop") if with_kv else ())
        return jax.device_get({k: carry[k] for k in fields}), cut

    @staticmethod
    def _stop_string_hits(host, rows, cut, decode_fn, stop_strings) -> list[int]:
        """Rows (not yet done) whose new text now contains a stop string; records their cut."""
        newly = []
        for i in range(rows):
            if host["done"][i] or i in cut:
                continue
            found = _cut_at_stop(host["tokens"][i, : host["length"][i]].tolist(), decode_fn, stop_strings)
            if found is not None:
                cut[i] = found
                newly.append(i)
        return newly

    def _completion(self, i, final, cut, decode_fn, prompt_len, stop_strings) -> Completion:
        tokens = final["tokens"][i, : final["length"][i]].tolist()
        if i in cut:
            tokens, text = cut[i]
            reason = STOP_STRING
        else:
            reason = STOP_TOKEN if final["stopped"][i] else LENGTH
            text = decode_fn(tokens) if decode_fn is not None else None
            if reason == STOP_TOKEN and stop_strings and text is not None:
                found = _cut_at_stop(tokens, decode_fn, stop_strings)  # a stop string inside the last chunk
                if found is not None:
                    tokens, text = found
                    reason = STOP_STRING
        logprob = float(final["logps"][i, : len(tokens)].sum())
        return Completion(tokens, text, reason, logprob, prompt_len)


def generate_tokens(model: Qwen2ForCausalLM, prompts: Sequence[Sequence[int]], max_new_tokens: int, *,
                    temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0, n: int = 1,
                    stop_token_ids: Sequence[int] = (), seed: int = 0) -> list[list[int]]:
    """`len(prompts) * n` new-token lists, prompt-major, each ending at and including its first stop
    token; greedy when temperature == 0."""
    out = Generator(model).generate(prompts, max_new_tokens, n=n, temperature=temperature, top_p=top_p, top_k=top_k,
                       stop_token_ids=stop_token_ids, seed=seed)
    return [c.tokens for c in out]

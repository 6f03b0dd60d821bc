"""Batched sampling engine: one prefill and a jitted `lax.while_loop` decode per call.

Shapes are bucketed (rows, prompt length, new tokens: powers of two) so a long MCTS run compiles a
handful of programs; every new program is logged and counted in `COMPILES`. Prompts are left-padded
and each row carries its own positions, so mixed lengths share one batch. `n` samples of a prompt
share one prefill: its KV cache is repeated, not recomputed. Each row draws from its own PRNG stream
(seed of its prompt, sample index, token index), so results do not depend on batch composition.

Stop tokens end a row inside the device loop. Stop strings need text, so they are checked on the
host between decode chunks of `stop_check_every` tokens; the loop exits early once every row stopped.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from rstar_jax import sharding
from rstar_jax.models.qwen2 import Qwen2ForCausalLM

COMPILES: list[tuple] = []  # one entry per traced program: (name, shape key); tests and logs read it
ROW_REUSE = 4  # a call may run in an already compiled row bucket up to this many times its own
_ROW_BUCKETS: dict[tuple, set[int]] = {}  # (prompt bucket, new bucket, n) -> row buckets used so far

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

    @property
    def new_tokens(self) -> int:
        return len(self.tokens)


def bucket(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum)."""
    return max(minimum, 1 << max(0, (n - 1).bit_length()))


def row_bucket(rows: int, shape: tuple, shards: int = 1) -> int:
    """Rows to pad a call to: the smallest row bucket already used with the same other shapes when it
    is at most ROW_REUSE times the call's own, else a new one. A search whose batch shrinks as its
    trees finish then reuses its programs (filler rows are cheap; a CPU compile costs seconds)."""
    own = -(-bucket(rows, 1) // shards) * shards
    used = _ROW_BUCKETS.setdefault(shape, set())
    reuse = [r for r in used if own <= r <= ROW_REUSE * own]
    pick = min(reuse) if reuse else own
    used.add(pick)
    return pick


# ---------------------------------------------------------------- sampling (pure, per row)


def mask_top_k_top_p(logits: jax.Array, top_k: jax.Array, top_p: jax.Array) -> jax.Array:
    """Keeps the `top_k` largest logits (0 = all) and, of those, the smallest set whose probability
    reaches `top_p`; the rest become -inf. logits [B, V], top_k/top_p [B]."""
    v = logits.shape[-1]
    desc = -jnp.sort(-logits, axis=-1)
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)
    in_k = jnp.arange(v)[None] < k[:, None]
    desc = jnp.where(in_k, desc, -jnp.inf)
    probs = jax.nn.softmax(desc, axis=-1)
    keep = (jnp.cumsum(probs, axis=-1) - probs) < top_p[:, None]  # always keeps the best token
    kept = jnp.sum(keep & in_k, axis=-1)
    threshold = jnp.take_along_axis(desc, (kept - 1)[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


def sample(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
           top_p: jax.Array) -> jax.Array:
    """Next token per row: argmax where temperature == 0, else a draw from softmax(logits / T)
    restricted by top-k / top-p. Each row uses only its own key."""
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    def draw(_):
        scaled = logits / jnp.maximum(temperature, 1e-6)[:, None]
        needs_mask = jnp.any((top_k > 0) | (top_p < 1.0))
        masked = jax.lax.cond(needs_mask, lambda s: mask_top_k_top_p(s, top_k, top_p), lambda s: s, scaled)
        drawn = jax.vmap(jax.random.categorical)(keys, masked).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    return jax.lax.cond(jnp.any(temperature > 0), draw, lambda _: greedy, None)


# ---------------------------------------------------------------- device programs


def _log_compile(name: str, key: tuple) -> None:
    COMPILES.append((name, key))
    logging.info("generate: compiling %s for %s (%d programs so far)", name, key, len(COMPILES))


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "max_new"))
def _prefill(graphdef, state, ids, positions, seeds, n: int, max_new: int):
    """Prefill of [B, P] left-padded prompts into a cache of P + max_new slots, repeated n times
    (prompt-major); returns the last-position logits, the cache and the PRNG key of each of the B*n
    rows: key(seed of its prompt; seeds [B, 2] = low, high 32 bits) folded with its sample index."""
    _log_compile("prefill", (ids.shape, n, max_new))
    model = nnx.merge(graphdef, state)
    b, p = ids.shape
    cache = model.init_cache(b, p + max_new)
    logits, cache = model.forward_cached(ids, positions, cache, 0, last_only=True)
    # Tree-structured prefix reuse plugs in here: instead of prefilling from slot 0, start from a
    # node's stored cache slice and prefill only the tokens it adds.
    rep = lambda x: jnp.repeat(x, n, axis=0)
    base = jax.vmap(lambda s: jax.random.fold_in(jax.random.PRNGKey(s[0]), s[1]))(seeds)
    keys = jax.vmap(jax.random.fold_in)(rep(base), jnp.tile(jnp.arange(n), b))
    return rep(logits), jax.tree.map(rep, cache), keys


@functools.partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("carry",))
def _decode(graphdef, state, carry: dict, stop_ids, temperature, top_k, top_p, until):
    """Runs the decode loop from carry["step"] until step == `until` or every row is done."""
    _log_compile("decode", (carry["tokens"].shape, carry["cache"].length))
    model = nnx.merge(graphdef, state)
    prompt_slots = carry["cache"].length - carry["tokens"].shape[1]

    def cond(c):
        return (c["step"] < until) & ~jnp.all(c["done"])

    def body(c):
        step = c["step"]
        keys = jax.vmap(jax.random.fold_in, (0, None))(c["keys"], step)
        tok = sample(c["logits"], keys, temperature, top_k, top_p)
        tok = jnp.where(c["done"], 0, tok)
        logp = jnp.take_along_axis(jax.nn.log_softmax(c["logits"], axis=-1), tok[:, None], axis=-1)
        logps = jax.lax.dynamic_update_slice(c["logps"], logp, (0, step))
        length = c["length"] + (~c["done"]).astype(jnp.int32)
        tokens = jax.lax.dynamic_update_slice(c["tokens"], tok[:, None], (0, step))
        hit = ~c["done"] & jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
        done = c["done"] | hit
        pos = jnp.where(done & ~hit, -1, c["prompt_len"] + step)[:, None]
        logits, cache = model.forward_cached(tok[:, None], pos, c["cache"], prompt_slots + step, last_only=True)
        return dict(c, step=step + 1, tokens=tokens, done=done, length=length, logps=logps,
                    logits=logits, cache=cache, stopped=c["stopped"] | hit)

    return jax.lax.while_loop(cond, body, carry)


# ---------------------------------------------------------------- host driver


def _find_stop(text: str, stop_strings: Sequence[str]) -> int:
    """End offset of the earliest stop string in `text`, or -1."""
    ends = [i + len(s) for s in stop_strings if (i := text.find(s)) >= 0]
    return min(ends) if ends else -1


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
        if any(len(p) == 0 for p in prompts):
            raise ValueError(f"generate: prompt {[len(p) for p in prompts].index(0)} is empty")
        if max_new_tokens < 1 or n < 1:
            raise ValueError(f"generate: max_new_tokens={max_new_tokens} and n={n} must be >= 1")
        if not (0.0 < top_p <= 1.0) or top_k < 0 or temperature < 0:
            raise ValueError(f"generate: bad sampling settings temperature={temperature} top_p={top_p} top_k={top_k}")
        bad = [t for p in prompts for t in p if not 0 <= t < self.vocab_size]
        if bad:
            raise ValueError(f"generate: token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
        decode_fn = getattr(decode, "decode", decode)
        if stop_strings and decode_fn is None:
            raise ValueError("generate: stop_strings need `decode` (a tokenizer or a function ids -> text)")
        seeds = list(seeds) if seeds is not None else [seed] * len(prompts)
        if len(seeds) != len(prompts):
            raise ValueError(f"generate: {len(seeds)} seeds for {len(prompts)} prompts")

        shards = 1 if self.mesh is None else self.mesh.shape["data"] * self.mesh.shape["fsdp"]
        b = len(prompts)
        p_pad = bucket(max(len(p) for p in prompts), self.min_prompt_bucket)
        new_pad = bucket(max_new_tokens, self.min_new_bucket)
        b_pad = row_bucket(b, (p_pad, new_pad, n, shards), shards)
        ids = np.zeros((b_pad, p_pad), np.int32)
        positions = np.full((b_pad, p_pad), -1, np.int32)
        lens = np.ones(b_pad, np.int32)
        for i, p in enumerate(prompts):
            ids[i, p_pad - len(p):] = p
            positions[i, p_pad - len(p):] = np.arange(len(p))
            lens[i] = len(p)
        positions[b:, -1] = 0  # filler rows: one token, done from the start
        seed_words = np.zeros((b_pad, 2), np.uint32)
        seed_words[:b, 0] = [s & 0xFFFFFFFF for s in seeds]
        seed_words[:b, 1] = [(s >> 32) & 0xFFFFFFFF for s in seeds]
        with self._mesh_context():
            logits, cache, keys = _prefill(self.graphdef, self.state, self._put(ids), self._put(positions),
                                           self._put(seed_words), n, new_pad)
        rows = b_pad * n
        done = np.zeros(rows, bool)
        done[b * n:] = True
        carry = dict(step=jnp.int32(0), tokens=self._put(np.zeros((rows, new_pad), np.int32)), done=self._put(done),
                     stopped=self._put(np.zeros(rows, bool)), length=self._put(np.zeros(rows, np.int32)),
                     logps=self._put(np.zeros((rows, new_pad), np.float32)), logits=logits, cache=cache,
                     prompt_len=self._put(np.repeat(lens, n)), keys=keys)
        stop_ids = jnp.asarray(list(stop_token_ids) or [-1], jnp.int32)
        row = lambda x, dt: self._put(np.full(rows, x, dt))
        temp, tk, tp = row(temperature, np.float32), row(top_k, np.int32), row(top_p, np.float32)
        chunk = self.stop_check_every if stop_strings else max_new_tokens
        cut: dict[int, tuple[list[int], str]] = {}
        while True:
            until = min(int(carry["step"]) + chunk, max_new_tokens)
            with self._mesh_context():
                carry = _decode(self.graphdef, self.state, carry, stop_ids, temp, tk, tp, jnp.int32(until))
            host = jax.device_get({k: carry[k] for k in ("tokens", "done", "length")})
            if stop_strings:
                newly = self._stop_string_hits(host, b * n, cut, decode_fn, stop_strings)
                if newly:
                    carry["done"] = self._put(host["done"] | np.isin(np.arange(rows), newly))
                    host["done"] = np.asarray(jax.device_get(carry["done"]))
            if host["done"].all() or until >= max_new_tokens:
                break
        final = jax.device_get({k: carry[k] for k in ("tokens", "length", "logps", "stopped")})
        return [self._completion(i, final, cut, decode_fn, int(lens[i // n]), stop_strings) for i in range(b * n)]

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

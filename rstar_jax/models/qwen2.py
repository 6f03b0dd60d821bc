"""Qwen2 decoder (policy) and its process-reward twin (PPM: value head or log-prob head) in flax.nnx.

Parameters are stored einsum-ready (e.g. q as [embed, q_heads, head_dim]) and carry `logical_axes`
metadata that rstar_jax.sharding maps to the mesh. Two forwards share one block implementation:
whole sequences (training; packed rows via segment ids) and the cache-aware path the generator uses
(explicit per-token positions, KV cache as plain arrays, padding marked by position -1).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from rstar_jax.models.config import Qwen2Config
from rstar_jax.sharding import BATCH, constrain

_MASKED = -1e30  # finite, so a query with no visible key gets uniform weights instead of NaN


def _param(rngs: nnx.Rngs, init: float | str, shape, dtype, axes) -> nnx.Param:
    """A parameter with logical axis names; `init` is 'zeros', 'ones' or the std of a normal draw.
    The init rule is kept as metadata so `init_model` can draw the same distribution on the host."""
    if init == "zeros":
        value = jnp.zeros(shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = jax.random.normal(rngs.params(), shape, dtype) * init
    return nnx.Param(value, logical_axes=axes, init=init)


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Per-layer keys/values [B, S, kv_heads, head_dim] and the position held by each slot ([B, S],
    -1 = empty or padding). Attention visibility comes from positions, so left-padded prompts,
    per-sequence lengths and copied prefixes all work with one scalar write index.

    A prefix is a slice [:, :index] of these arrays; extending it is `forward_cached` on the new
    tokens at `index`. (The search's reuse of decoded paths lives in generate.generate_extending, and
    of scored paths in mcts.scorer, which extends through `Qwen2PPM.scores_cached`.)
    """

    k: list[jax.Array]
    v: list[jax.Array]
    pos: jax.Array

    @property
    def length(self) -> int:
        return self.pos.shape[1]


def init_cache(config: Qwen2Config, batch: int, length: int, dtype: Any) -> KVCache:
    """An empty cache with room for `length` tokens per sequence."""
    shape = (batch, length, config.num_key_value_heads, config.head_dim)
    layers = config.num_hidden_layers
    return KVCache(k=[jnp.zeros(shape, dtype) for _ in range(layers)],
                   v=[jnp.zeros(shape, dtype) for _ in range(layers)],
                   pos=jnp.full((batch, length), -1, jnp.int32))


def rms_norm(x: jax.Array, weight: jax.Array, eps: float) -> jax.Array:
    """RMSNorm computed in fp32, scaled in the input dtype (as the HF reference does)."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotary embedding of x [B, T, heads, head_dim] at integer positions [B, T] (half-split layout)."""
    half = x.shape[-1] // 2
    inv_freq = 1.0 / (theta ** (jnp.arange(0, half, dtype=jnp.float32) * 2.0 / x.shape[-1]))
    angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, half]
    cos = jnp.cos(angles)[:, :, None, :].astype(x.dtype)
    sin = jnp.sin(angles)[:, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
    """Grouped-query attention: q [B,T,H,D], k/v [B,S,K,D], visible [B,T,S] -> [B,T,H,D].

    Laid out [B, K, G*T, ...] so both products are plain batched matmuls, and normalised after the value
    product (a [.., D] divide instead of one over the [.., S] weights): the score-sized passes are what cost
    on CPU (one layer's gradient at 16 x 320 tokens: 134 ms as an einsum over [B,K,G,T,S] with a softmax,
    55 ms like this with causal blocks)."""
    b, t, h, d = q.shape
    kv = k.shape[2]
    g = h // kv
    qg = q.reshape(b, t, kv, g, d).transpose(0, 2, 3, 1, 4).reshape(b, kv, g * t, d)
    scores = jnp.einsum("bkqd,bksd->bkqs", qg, k.transpose(0, 2, 1, 3), preferred_element_type=jnp.float32)
    scores = jnp.where(jnp.tile(visible[:, None], (1, 1, g, 1)), scores * (d ** -0.5), _MASKED)
    top = jax.lax.stop_gradient(jnp.max(scores, axis=-1, keepdims=True))  # any shift gives the same softmax
    weights = jnp.exp(scores - top)
    out = jnp.einsum("bkqs,bksd->bkqd", weights.astype(v.dtype), v.transpose(0, 2, 1, 3),
                     preferred_element_type=jnp.float32) / jnp.sum(weights, axis=-1, keepdims=True)
    return out.astype(v.dtype).reshape(b, kv, g, t, d).transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def causal_blocks(t: int) -> int:
    """How many query blocks `attend_causal` splits a length-`t` sequence into: one per 64 tokens, at most 8
    (the computed share of the score matrix is (n+1)/2n, so more blocks would add program size, not savings)."""
    return min(8, max(1, t // 64))


def attend_causal(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
    """`attend` for self-attention whose mask is causal (q, k, v cover the same T positions): each block of
    queries scores only the keys up to its own end, so most of the score matrix's masked upper triangle is
    never computed (training and whole-sequence scoring spend most of their time in attention)."""
    t = q.shape[1]
    size = -(-t // causal_blocks(t))
    outs = [attend(q[:, s:s + size], k[:, :s + size], v[:, :s + size], visible[:, s:s + size, :s + size])
            for s in range(0, t, size)]
    return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, param_dtype):
        d, h, kv, hd = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        init = cfg.initializer_range
        self.q_w = _param(rngs, init, (d, h, hd), param_dtype, ("embed", "q_heads", "head_dim"))
        self.q_b = _param(rngs, "zeros", (h, hd), param_dtype, ("q_heads", "head_dim"))
        self.k_w = _param(rngs, init, (d, kv, hd), param_dtype, ("embed", "kv_heads", "head_dim"))
        self.k_b = _param(rngs, "zeros", (kv, hd), param_dtype, ("kv_heads", "head_dim"))
        self.v_w = _param(rngs, init, (d, kv, hd), param_dtype, ("embed", "kv_heads", "head_dim"))
        self.v_b = _param(rngs, "zeros", (kv, hd), param_dtype, ("kv_heads", "head_dim"))
        self.o_w = _param(rngs, init, (h, hd, d), param_dtype, ("q_heads", "head_dim", "embed"))

    def qkv(self, x: jax.Array, positions: jax.Array, theta: float):
        dt = x.dtype
        q = jnp.einsum("btd,dhk->bthk", x, self.q_w[...].astype(dt)) + self.q_b[...].astype(dt)
        k = jnp.einsum("btd,dhk->bthk", x, self.k_w[...].astype(dt)) + self.k_b[...].astype(dt)
        v = jnp.einsum("btd,dhk->bthk", x, self.v_w[...].astype(dt)) + self.v_b[...].astype(dt)
        return rope(q, positions, theta), rope(k, positions, theta), v

    def out(self, o: jax.Array) -> jax.Array:
        return jnp.einsum("bthk,hkd->btd", o, self.o_w[...].astype(o.dtype))


class MLP(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, param_dtype):
        d, f = cfg.hidden_size, cfg.intermediate_size
        init = cfg.initializer_range
        self.gate = _param(rngs, init, (d, f), param_dtype, ("embed", "mlp"))
        self.up = _param(rngs, init, (d, f), param_dtype, ("embed", "mlp"))
        self.down = _param(rngs, init, (f, d), param_dtype, ("mlp", "embed"))

    def __call__(self, x: jax.Array) -> jax.Array:
        # Tokens as one 2-D axis: with [batch, seq] kept apart, XLA:CPU fuses the SiLU gradient into a
        # transposed write for the weight gradients, and the MLP's forward + backward took 2.4x as long
        # at the demo's training shape (benchmarks/bench_train.py).
        dt, shape = x.dtype, x.shape
        x = x.reshape(-1, shape[-1])
        g = x @ self.gate[...].astype(dt)
        u = x @ self.up[...].astype(dt)
        return ((jax.nn.silu(g) * u) @ self.down[...].astype(dt)).reshape(shape)


class Block(nnx.Module):
    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, param_dtype):
        self.input_norm = _param(rngs, "ones", (cfg.hidden_size,), param_dtype, ("norm",))
        self.attn = Attention(cfg, rngs, param_dtype)
        self.post_norm = _param(rngs, "ones", (cfg.hidden_size,), param_dtype, ("norm",))
        self.mlp = MLP(cfg, rngs, param_dtype)


class Qwen2Backbone(nnx.Module):
    """Embedding, decoder blocks and final norm: token ids -> hidden states."""

    def __init__(self, cfg: Qwen2Config, rngs: nnx.Rngs, param_dtype):
        init = cfg.initializer_range
        self.embed = _param(rngs, init, (cfg.padded_vocab, cfg.hidden_size), param_dtype, ("vocab", "embed"))
        self.layers = nnx.List([Block(cfg, rngs, param_dtype) for _ in range(cfg.num_hidden_layers)])
        self.norm = _param(rngs, "ones", (cfg.hidden_size,), param_dtype, ("norm",))

    def run(self, cfg: Qwen2Config, ids: jax.Array, positions: jax.Array, dtype, attend_step) -> tuple[jax.Array, list]:
        """Shared layer loop; `attend_step(layer, q, k, v) -> (attention output, aux)` decides what each
        query sees (the new tokens only, the cache after writing them, or a prompt cache shared by
        several rows). Returns normed hidden states and each layer's aux."""
        x = constrain(jnp.take(self.embed[...], ids, axis=0).astype(dtype), (BATCH, "length", "embed"))
        extra = []
        for i, block in enumerate(self.layers):
            h = rms_norm(x, block.input_norm[...], cfg.rms_norm_eps)
            q, k, v = block.attn.qkv(h, positions, cfg.rope_theta)
            o, aux = attend_step(i, q, k, v)
            x = x + block.attn.out(o)
            x = x + block.mlp(rms_norm(x, block.post_norm[...], cfg.rms_norm_eps))
            x = constrain(x, (BATCH, "length", "embed"))
            extra.append(aux)
        return rms_norm(x, self.norm[...], cfg.rms_norm_eps), extra

    def hidden(self, cfg: Qwen2Config, ids: jax.Array, positions: jax.Array, segment_ids: jax.Array,
               dtype, branches: jax.Array | None = None) -> jax.Array:
        """Whole-sequence hidden states; token i sees tokens j <= i of its own segment (0 = padding) and,
        with `branches` [B, T], only of branch 0 (a shared prefix) or its own branch: several continuations
        of one prefix in a row, each as if it followed the prefix alone (its positions restart there)."""
        t = ids.shape[1]
        causal = jnp.tril(jnp.ones((t, t), bool))[None]
        same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
        visible = causal & same
        if branches is not None:
            visible &= (branches[:, None, :] == 0) | (branches[:, None, :] == branches[:, :, None])
        h, _ = self.run(cfg, ids, positions, dtype, lambda i, q, k, v: (attend_causal(q, k, v, visible), None))
        return h

    def hidden_cached(self, cfg: Qwen2Config, ids: jax.Array, positions: jax.Array, cache: KVCache,
                      index: jax.Array, dtype) -> tuple[jax.Array, KVCache]:
        """Writes the new tokens' keys/values at slots [index, index+T) and attends over the cache;
        a key is visible when its slot holds a real token (pos >= 0) at a position <= the query's."""
        pos = jax.lax.dynamic_update_slice(cache.pos, positions.astype(jnp.int32), (0, index))
        visible = (pos[:, None, :] >= 0) & (pos[:, None, :] <= positions[:, :, None])

        def step(i, q, k, v):
            ck = jax.lax.dynamic_update_slice(cache.k[i], k.astype(cache.k[i].dtype), (0, index, 0, 0))
            cv = jax.lax.dynamic_update_slice(cache.v[i], v.astype(cache.v[i].dtype), (0, index, 0, 0))
            return attend(q, ck.astype(k.dtype), cv.astype(v.dtype), visible), (ck, cv)

        h, kv = self.run(cfg, ids, jnp.maximum(positions, 0), dtype, step)
        return h, KVCache(k=[a for a, _ in kv], v=[b for _, b in kv], pos=pos)


def _defaults(ids: jax.Array, positions, segment_ids):
    if positions is None:
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1], dtype=jnp.int32), ids.shape)
    if segment_ids is None:
        segment_ids = jnp.ones(ids.shape, jnp.int32)
    return positions, segment_ids


def _lm_head(config: Qwen2Config, rngs: nnx.Rngs, param_dtype) -> nnx.Param:
    """An untied output projection [hidden, padded_vocab] (the policy's, and a log-prob PPM's)."""
    return _param(rngs, config.initializer_range, (config.hidden_size, config.padded_vocab), param_dtype,
                  ("embed", "vocab"))


def _head_weight(m: nnx.Module) -> jax.Array:
    """A model's output projection [hidden, padded_vocab]: the embedding's transpose when tied."""
    return m.model.embed[...].T if m.config.tie_word_embeddings else m.lm_head[...]


def _logits(m: nnx.Module, h: jax.Array) -> jax.Array:
    """Hidden states [..., hidden] -> fp32 logits [..., vocab_size] (padding rows cut off)."""
    out = jnp.einsum("...d,dv->...v", h, _head_weight(m).astype(h.dtype), preferred_element_type=jnp.float32)
    return out[..., : m.config.vocab_size]


class Qwen2ForCausalLM(nnx.Module):
    """The policy: `model(ids)` -> fp32 logits [B, T, vocab_size].

    `param_dtype` is the stored weight dtype, `dtype` the compute dtype (fp32 on CPU tests, bf16 on
    accelerators); attention softmax, norms and logits are always fp32.
    """

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None):
        self.config = config
        self.dtype = jnp.dtype(dtype or param_dtype)
        self.model = Qwen2Backbone(config, rngs, param_dtype)
        if not config.tie_word_embeddings:
            self.lm_head = _lm_head(config, rngs, param_dtype)

    def logits(self, h: jax.Array) -> jax.Array:
        """Hidden states [..., hidden] -> fp32 logits [..., vocab_size] (padding rows cut off)."""
        return _logits(self, h)

    def __call__(self, input_ids: jax.Array, positions: jax.Array | None = None,
                 segment_ids: jax.Array | None = None) -> jax.Array:
        positions, segment_ids = _defaults(input_ids, positions, segment_ids)
        return self.logits(self.model.hidden(self.config, input_ids, positions, segment_ids, self.dtype))

    def forward_cached(self, input_ids: jax.Array, positions: jax.Array, cache: KVCache, index: jax.Array,
                       *, last_only: bool = False) -> tuple[jax.Array, KVCache]:
        """Generator path: new tokens [B, T] at `positions` (-1 = padding) written at cache slot `index`.
        Returns logits [B, T, V] (or [B, V] of the last column when `last_only`) and the new cache."""
        h, cache = self.model.hidden_cached(self.config, input_ids, positions, cache, index, self.dtype)
        return self.logits(h[:, -1] if last_only else h), cache

    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        return init_cache(self.config, batch, length, dtype or self.dtype)


PPM_HEADS = ("value", "logprob")


def step_score(raw: jax.Array, head: str = "value", tokens: jax.Array | None = None) -> jax.Array:
    """PPM step score used at inference, in (-1, 1]: tanh(r / 5) of a value head's reward (the
    reference); 2 p - 1 of a log-prob head's per-token probability p = exp(r / tokens), the geometric
    mean over the step's `tokens`. The whole step's probability exp(r) of a ~30-token step rounded
    2 p - 1 to -1 in float32 for most steps of a demo run's later PPMs, so paths and candidates tied."""
    if head == "value":
        return jnp.tanh(raw / 5.0)
    if tokens is None:
        raise ValueError("step_score: a log-prob head's score needs the step's token counts (`tokens`)")
    return 2.0 * jnp.exp(raw / jnp.maximum(tokens, 1)) - 1.0


def token_logprob(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log softmax(logits)[tokens] over the last axis ([..., V] and [...]), without materialising the
    whole log-softmax (the decode loop's sampled tokens, a log-prob PPM's step tokens)."""
    top = jnp.max(logits, axis=-1)
    lse = jnp.log(jnp.sum(jnp.exp(logits - top[..., None]), axis=-1)) + top
    return jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0] - lse


def span_logprob(logits: jax.Array, ids: jax.Array, starts: jax.Array, lengths: jax.Array) -> jax.Array:
    """Summed log-probability [B] of tokens ids[b, t] for starts[b] <= t < lengths[b] (t >= 1), each
    predicted from logits[b, t - 1] ([B, T, V] fp32)."""
    tok = token_logprob(logits[:, :-1].astype(jnp.float32), ids[:, 1:])  # [B, T-1]: token t+1
    t = jnp.arange(1, ids.shape[1])[None]
    inside = (t >= starts[:, None]) & (t < lengths[:, None])
    return jnp.sum(jnp.where(inside, tok, 0.0), axis=1)


class Qwen2PPM(nnx.Module):
    """Process preference model on the Qwen2 backbone; `ppm(ids, lengths, starts)` -> raw rewards [B] (fp32).

    `head="value"` (the reference): `Linear(hidden -> 1)` read at the last non-pad token.
    `head="logprob"`: the policy's own LM head kept, and the reward of a step is the log-probability
    the model gives the step's tokens (from `starts`): trained on the same pairs, it starts from the
    policy's own judgement instead of a fresh head that must learn it from a few thousand pairs.
    """

    def __init__(self, config: Qwen2Config, *, rngs: nnx.Rngs, param_dtype=jnp.float32, dtype=None,
                 head_init_std: float | None = None, head: str = "value"):
        if head not in PPM_HEADS:
            raise ValueError(f"PPM head {head!r}: expected one of {PPM_HEADS}")
        self.config, self.head = config, head
        self.dtype = jnp.dtype(dtype or param_dtype)
        self.model = Qwen2Backbone(config, rngs, param_dtype)
        if head == "value":
            std = config.initializer_range if head_init_std is None else head_init_std
            self.v_head_w = _param(rngs, std, (config.hidden_size, 1), param_dtype, ("embed", "value"))
            self.v_head_b = _param(rngs, "zeros", (1,), param_dtype, ("value",))
        elif not config.tie_word_embeddings:
            self.lm_head = _lm_head(config, rngs, param_dtype)

    def __call__(self, input_ids: jax.Array, lengths: jax.Array | None = None, starts: jax.Array | None = None,
                 positions: jax.Array | None = None, segment_ids: jax.Array | None = None) -> jax.Array:
        """Raw rewards of right-padded rows; `lengths` [B] counts real tokens (default: all T), `starts`
        [B] is where the scored step begins (log-prob head only; default 1: every token after the first)."""
        h, lengths, starts = self._rows(input_ids, lengths, starts, positions, segment_ids)
        return self._reward(h, input_ids, lengths, starts)

    def _rows(self, input_ids: jax.Array, lengths: jax.Array | None, starts: jax.Array | None,
              positions: jax.Array | None = None, segment_ids: jax.Array | None = None
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Hidden states of right-padded rows, with their lengths and step starts (defaults as `__call__`)."""
        b, t = input_ids.shape
        if lengths is None:
            lengths = jnp.full((b,), t, jnp.int32)
        if starts is None:
            starts = jnp.ones_like(lengths)
        if segment_ids is None:
            segment_ids = (jnp.arange(t)[None] < lengths[:, None]).astype(jnp.int32)
        positions, segment_ids = _defaults(input_ids, positions, segment_ids)
        return self.model.hidden(self.config, input_ids, positions, segment_ids, self.dtype), lengths, starts

    def pair_rewards(self, ids: jax.Array, prefix_len: jax.Array, pos_len: jax.Array,
                     neg_len: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Raw rewards [B] of two steps after one prefix, from rows `ids` [B, T] = prefix, pos step, neg
        step, right-padded (lengths [B] each; prefix_len >= 1): the prefix is computed once, not per step,
        and each step scores as it would after the prefix alone (`__call__` on prefix + step)."""
        t = ids.shape[1]
        col = jnp.arange(t)[None]
        p, a, n = prefix_len[:, None], pos_len[:, None], neg_len[:, None]
        branches = jnp.where(col < p, 0, jnp.where(col < p + a, 1, 2))
        positions = jnp.where(branches == 2, col - a, col).astype(jnp.int32)
        segment_ids = (col < p + a + n).astype(jnp.int32)
        h = self.model.hidden(self.config, ids, positions, segment_ids, self.dtype, branches)
        if self.head == "value":
            return self._value(h, prefix_len + pos_len - 1), self._value(h, prefix_len + pos_len + neg_len - 1)
        logits = _logits(self, h)
        tok = token_logprob(logits[:, :-1].astype(jnp.float32), ids[:, 1:])  # [B, T-1]: column c + 1 from c
        c = col[:, :-1]
        pos = jnp.sum(jnp.where((c >= p - 1) & (c < p + a - 1), tok, 0.0), axis=1)
        # the neg step's first token follows the prefix's last (column p - 1), not the pos step's last
        first = jnp.take_along_axis(logits, (prefix_len - 1)[:, None, None], axis=1)[:, 0].astype(jnp.float32)
        first_token = jnp.take_along_axis(ids, (prefix_len + pos_len)[:, None], axis=1)[:, 0]
        neg = jnp.sum(jnp.where((c >= p + a) & (c < p + a + n - 1), tok, 0.0), axis=1)
        return pos, neg + token_logprob(first, first_token)

    def _reward(self, h: jax.Array, ids: jax.Array, lengths: jax.Array, starts: jax.Array) -> jax.Array:
        """Raw rewards [B] from hidden states [B, T, hidden] of rows with `lengths` real tokens."""
        if self.head == "logprob":
            return span_logprob(_logits(self, h), ids, starts, lengths)
        return self._value(h, lengths - 1)

    def _value(self, h: jax.Array, index: jax.Array) -> jax.Array:
        """A value head's raw reward [B], read at column `index` [B] of hidden states [B, T, hidden]."""
        last = jnp.take_along_axis(h, jnp.maximum(index, 0)[:, None, None], axis=1)[:, 0]
        w = self.v_head_w[...].astype(last.dtype)
        return (jnp.einsum("bd,do->bo", last, w, preferred_element_type=jnp.float32)[:, 0]
                + self.v_head_b[...].astype(jnp.float32)[0])

    def scores(self, input_ids: jax.Array, lengths: jax.Array | None = None,
               starts: jax.Array | None = None) -> jax.Array:
        """Step scores in (-1, 1] (`step_score`)."""
        return self._step_scores(input_ids, *self._rows(input_ids, lengths, starts))

    def scores_cached(self, input_ids: jax.Array, positions: jax.Array, cache: KVCache,
                      index: jax.Array, starts: jax.Array) -> tuple[jax.Array, KVCache]:
        """Step scores of rows that continue keys/values already in `cache`: new tokens [B, T] at
        `positions` (-1 = right padding) are written at slot `index`; a log-prob head scores the new
        tokens from column `starts` [B] on. Returns the scores [B] and the cache."""
        h, cache = self.model.hidden_cached(self.config, input_ids, positions, cache, index, self.dtype)
        return self._step_scores(input_ids, h, jnp.sum(positions >= 0, axis=1), starts), cache

    def _step_scores(self, ids: jax.Array, h: jax.Array, lengths: jax.Array, starts: jax.Array) -> jax.Array:
        """`step_score` of each row's reward; a log-prob head's over its lengths - starts step tokens."""
        return step_score(self._reward(h, ids, lengths, starts), self.head, lengths - starts)

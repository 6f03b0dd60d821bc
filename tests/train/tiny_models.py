"""A small causal transformer (and its value-head twin) for the trainer tests.

It speaks the call convention the trainers use: `lm(inputs, positions=, segment_ids=) -> logits`
and `ppm(ids, lengths=) -> rewards`, and names its weights' mesh axes so the mesh tests shard it.
"""
import jax
import jax.numpy as jnp
from flax import nnx

_init = nnx.initializers.normal(0.02)


def _dense(d_in, d_out, axes, rngs):
    # sharding names are metadata only (no eager placement): the trainer places the state itself
    with nnx.use_eager_sharding(False):
        return nnx.Linear(d_in, d_out, kernel_init=nnx.with_partitioning(_init, axes), rngs=rngs)


class Block(nnx.Module):
    def __init__(self, d: int, rngs: nnx.Rngs):
        self.norm1 = nnx.LayerNorm(d, rngs=rngs)
        self.qkv = _dense(d, 3 * d, ("fsdp", "tensor"), rngs)
        self.out = _dense(d, d, ("tensor", "fsdp"), rngs)
        self.norm2 = nnx.LayerNorm(d, rngs=rngs)
        self.up = _dense(d, 4 * d, ("fsdp", "tensor"), rngs)
        self.down = _dense(4 * d, d, ("tensor", "fsdp"), rngs)

    def __call__(self, h, mask):
        q, k, v = jnp.split(self.qkv(self.norm1(h)), 3, axis=-1)
        att = jnp.einsum("bqd,bkd->bqk", q, k) / jnp.sqrt(q.shape[-1])
        att = jax.nn.softmax(jnp.where(mask, att, -1e9), axis=-1)
        h = h + self.out(jnp.einsum("bqk,bkd->bqd", att, v))
        return h + self.down(jax.nn.gelu(self.up(self.norm2(h))))


class TinyLM(nnx.Module):
    def __init__(self, vocab: int, d: int = 64, layers: int = 2, max_len: int = 512, *, seed: int = 0):
        rngs = nnx.Rngs(seed)
        vocab = -(-vocab // 8) * 8  # padded so the vocabulary axis splits over the mesh
        with nnx.use_eager_sharding(False):
            self.embed = nnx.Embed(vocab, d, embedding_init=nnx.with_partitioning(_init, ("tensor", "fsdp")),
                                   rngs=rngs)
        self.pos = nnx.Embed(max_len, d, embedding_init=_init, rngs=rngs)
        self.blocks = nnx.List([Block(d, rngs) for _ in range(layers)])
        self.norm = nnx.LayerNorm(d, rngs=rngs)
        self.head = _dense(d, vocab, ("fsdp", "tensor"), rngs)

    def hidden(self, x, positions, segment_ids):
        L = x.shape[1]
        mask = jnp.tril(jnp.ones((L, L), bool))[None] & (segment_ids[:, :, None] == segment_ids[:, None, :])
        h = self.embed(x) + self.pos(positions)
        for block in self.blocks:
            h = block(h, mask)
        return self.norm(h)

    def __call__(self, x, positions=None, segment_ids=None):
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(x.shape[1]), x.shape)
        if segment_ids is None:
            segment_ids = jnp.ones_like(x)
        return self.head(self.hidden(x, positions, segment_ids))


class TinyPPM(nnx.Module):
    def __init__(self, vocab: int, d: int = 64, layers: int = 2, *, seed: int = 0):
        self.lm = TinyLM(vocab, d, layers, seed=seed)
        self.value = nnx.Linear(d, 1, kernel_init=_init, rngs=nnx.Rngs(seed + 1))

    def __call__(self, ids, lengths):
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        seg = (positions < lengths[:, None]).astype(jnp.int32)
        h = self.lm.hidden(ids, positions, seg)
        last = jnp.take_along_axis(h, (lengths - 1)[:, None, None], axis=1)[:, 0]
        return self.value(last)[:, 0]

"""Mesh construction, the logical-axis rules, and a sharded forward equal to the unsharded one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from rstar_jax import sharding
from rstar_jax.models import Qwen2Config, init_model


def test_mesh_shape_resolves_the_rest():
    assert sharding.mesh_shape({"data": 2, "fsdp": -1, "tensor": 2}, 8) == (2, 2, 2)
    assert sharding.mesh_shape({"fsdp": -1}, 8) == (1, 8, 1)
    with pytest.raises(ValueError, match="only one axis"):
        sharding.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="do not divide"):
        sharding.mesh_shape({"data": 3, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="use 4 of 8"):
        sharding.mesh_shape({"data": 2, "fsdp": 2, "tensor": 1}, 8)
    mesh = sharding.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


def test_rules_replicate_what_does_not_divide():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    assert sharding.logical_to_spec(("embed", "q_heads", "head_dim"), (32, 4, 8), mesh) == P("fsdp", "tensor", None)
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (32, 1, 8), mesh) == P("fsdp", None, None)
    assert sharding.logical_to_spec(("batch", "length"), (8, 5), mesh) == P(("data", "fsdp"), None)
    assert sharding.logical_to_spec(("batch", "length"), (3, 5), mesh) == P(None, None)


def test_sharded_forward_equals_unsharded_and_params_follow_rules():
    cfg = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, vocab_pad_multiple=8)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    plain = init_model(cfg, seed=5)
    sharded = init_model(cfg, seed=5, mesh=mesh)
    expected = {  # parameter -> spec the rules must give
        ("model", "embed"): P("tensor", "fsdp"),
        ("model", "layers", 0, "attn", "q_w"): P("fsdp", "tensor", None),
        ("model", "layers", 0, "attn", "k_b"): P("tensor", None),
        ("model", "layers", 0, "attn", "o_w"): P("tensor", None, "fsdp"),
        ("model", "layers", 1, "mlp", "down"): P("tensor", "fsdp"),
        ("model", "norm"): P(None),
        ("lm_head",): P("fsdp", "tensor"),
    }
    flat = dict(nnx.to_flat_state(nnx.state(sharded)))
    for path, spec in expected.items():
        arr = flat[path].get_value()
        assert arr.sharding.spec == spec, path
        assert arr.addressable_shards[0].data.size * arr.sharding.num_devices // arr.size > 1 or spec == P(None)
    assert len({d for d in flat[("lm_head",)].get_value().sharding.device_set}) == 8
    ids = jnp.asarray(np.random.RandomState(0).randint(0, 100, (8, 12)), jnp.int32)
    graphdef, state = nnx.split(sharded)
    with jax.set_mesh(mesh):
        ids_sh = jax.device_put(ids, sharding.batch_sharding(mesh, 2, 8))
        out = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, ids_sh)
    g2, s2 = nnx.split(plain)
    ref = jax.jit(lambda s, x: nnx.merge(g2, s)(x))(s2, ids)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5, rtol=0)


def test_state_shardings_tree_fits_jit():
    cfg = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    mesh = sharding.make_mesh({"data": 1, "fsdp": 4, "tensor": 2}, devices=jax.devices()[:8])
    _, state = nnx.split(init_model(cfg))
    shardings = sharding.state_shardings(state, mesh)
    placed = jax.device_put(state, shardings)
    w = placed["model"]["layers"][0]["mlp"]["gate"].get_value()
    assert w.sharding.spec == P("fsdp", "tensor")

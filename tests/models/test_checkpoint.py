"""HF checkpoint round trips: transformers -> ours (single and sharded files), ours -> transformers, PPM."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from hf_tiny import hf_logits, hf_model, jit_call, save
from transformers import AutoModelForCausalLM

from rstar_jax.io import InputError
from rstar_jax.models import load_hf, load_hf_ppm, ppm_from_policy, save_hf

IDS = np.random.RandomState(0).randint(0, 997, (2, 13))


def test_sharded_transformers_checkpoint_loads(tmp_path):
    hf = hf_model(vocab=997, tied=False)
    path = save(hf, tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = load_hf(path)
    np.testing.assert_allclose(np.asarray(jit_call(model, jnp.asarray(IDS))), hf_logits(hf, IDS), atol=1e-4, rtol=0)


@pytest.mark.parametrize("tied", [False, True])
def test_save_hf_loads_in_transformers(tmp_path, tied):
    hf = hf_model(vocab=997, tied=tied)
    model = load_hf(save(hf, tmp_path / "in"))
    save_hf(model, tmp_path / "out", max_shard_bytes=200_000 if tied else 2 ** 31)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists() == tied
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), dtype=torch.float32).eval()
    assert back.config.tie_word_embeddings == tied and back.config.vocab_size == 997
    np.testing.assert_allclose(hf_logits(back, IDS), hf_logits(hf, IDS), atol=1e-5, rtol=0)
    # and ours reads its own output back unchanged
    again = load_hf(tmp_path / "out")
    np.testing.assert_array_equal(np.asarray(jit_call(again, jnp.asarray(IDS))),
                                  np.asarray(jit_call(model, jnp.asarray(IDS))))


def test_bf16_weights_round_trip(tmp_path):
    hf = hf_model().to(torch.bfloat16)
    model = load_hf(save(hf, tmp_path / "in"), dtype=jnp.bfloat16)
    assert model.model.embed.get_value().dtype == jnp.bfloat16
    save_hf(model, tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"))
    for (n, a), (_, b) in zip(hf.named_parameters(), back.named_parameters()):
        assert b.dtype == torch.bfloat16 and torch.equal(a, b), n


def test_ppm_save_load_keeps_value_head(tmp_path):
    hf = hf_model()
    policy_dir = save(hf, tmp_path / "policy")
    fresh = load_hf_ppm(policy_dir, head_init_std=0.3, head_seed=7)
    # a fresh head from a policy checkpoint is the same as building it from the policy in memory
    in_memory = ppm_from_policy(load_hf(policy_dir), head_init_std=0.3, head_seed=7)
    ids, lens = jnp.asarray(IDS % 1000), jnp.asarray([13, 6])
    r1 = np.asarray(jit_call(fresh, ids, lens))
    np.testing.assert_array_equal(r1, np.asarray(jit_call(in_memory, ids, lens)))
    assert np.std(np.asarray(fresh.v_head_w.get_value())) == pytest.approx(0.3, rel=0.3)
    save_hf(fresh, tmp_path / "ppm")
    cfg = json.loads((tmp_path / "ppm" / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForProcessRewardModel"]
    # loading with a different head seed must still restore the saved head, not draw a new one
    restored = load_hf_ppm(tmp_path / "ppm", head_init_std=0.3, head_seed=99)
    np.testing.assert_array_equal(np.asarray(jit_call(restored, ids, lens)), r1)


@pytest.mark.parametrize("tied", [True, False])
def test_logprob_ppm_is_a_causal_lm_that_remembers_its_head(tmp_path, tied):
    """A log-prob PPM from a policy checkpoint keeps the policy's weights (its LM head included), saves as a
    causal LM that transformers loads, and reloads as a log-prob PPM; asking for the other head is an error."""
    hf = hf_model(vocab=997, tied=tied)
    policy_dir = save(hf, tmp_path / "policy")
    ppm = load_hf_ppm(policy_dir, head="logprob")
    ids, lens, starts = jnp.asarray(IDS), jnp.asarray([13, 6]), jnp.asarray([4, 2])
    logp = torch.log_softmax(torch.from_numpy(hf_logits(hf, IDS)).double(), dim=-1).numpy()
    want = [sum(logp[b, t - 1, IDS[b, t]] for t in range(int(starts[b]), int(lens[b]))) for b in range(2)]
    np.testing.assert_allclose(np.asarray(jit_call(ppm, ids, lens, starts)), want, atol=1e-4)
    save_hf(ppm, tmp_path / "ppm")
    assert json.loads((tmp_path / "ppm" / "config.json").read_text())["rstar_ppm_head"] == "logprob"
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "ppm")
    np.testing.assert_allclose(again(torch.from_numpy(IDS)).logits.detach().numpy(), hf_logits(hf, IDS), atol=1e-4)
    restored = load_hf_ppm(tmp_path / "ppm")
    assert restored.head == "logprob"
    np.testing.assert_allclose(np.asarray(jit_call(restored, ids, lens, starts)), want, atol=1e-4)
    with pytest.raises(InputError, match="logprob head, asked to load with a value head"):
        load_hf_ppm(tmp_path / "ppm", head="value")
    save_hf(load_hf_ppm(policy_dir), tmp_path / "value_ppm")
    with pytest.raises(InputError, match="value head, asked to load with a logprob head"):
        load_hf_ppm(tmp_path / "value_ppm", head="logprob")


def test_bad_checkpoints_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        load_hf(tmp_path)
    hf = hf_model()
    save(hf, tmp_path)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(InputError, match="model.layers.1.mlp.up_proj.weight"):
        load_hf(tmp_path)

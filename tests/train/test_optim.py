"""Learning-rate schedules and the optimizer chain built from the train config."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import base
from rstar_jax.train import optim


def _cfg(**kw):
    cfg = base.train_config()
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay(schedule):
    cfg = _cfg(learning_rate=1e-3, warmup_ratio=0.1, schedule=schedule, end_lr_ratio=0.1)
    lr = optim.learning_rate_schedule(cfg, 100)
    assert float(lr(0)) == 0.0
    assert float(lr(5)) == pytest.approx(5e-4)
    assert float(lr(10)) == pytest.approx(1e-3)
    end = {"cosine": 1e-4, "linear": 1e-4, "constant": 1e-3}[schedule]
    assert float(lr(100)) == pytest.approx(end, rel=1e-5)
    if schedule == "cosine":
        assert float(lr(55)) == pytest.approx(1e-4 + 0.9e-3 * 0.5, rel=1e-4)  # halfway down
    if schedule == "linear":
        assert float(lr(55)) == pytest.approx(0.55e-3, rel=1e-4)


def test_no_warmup_starts_at_peak_and_bad_name_fails():
    assert float(optim.learning_rate_schedule(_cfg(warmup_ratio=0.0, learning_rate=2e-3), 10)(0)) == pytest.approx(2e-3)
    with pytest.raises(ValueError, match="train.schedule must be one of"):
        optim.learning_rate_schedule(_cfg(schedule="exp"), 10)


def test_clipping_bounds_the_first_update():
    cfg = _cfg(learning_rate=1.0, warmup_ratio=0.0, schedule="constant", max_grad_norm=0.5, weight_decay=0.0)
    opt = optim.make_optimizer(cfg)
    params = {"w": jnp.zeros(3)}
    state = optim.with_learning_rate(opt.init(params), jnp.float32(1.0))
    # Adam's first step is ~lr * sign(g) whatever the scale, so check that clipping reached the moments
    _, state = opt.update({"w": jnp.array([30.0, 40.0, 0.0])}, state, params)
    mu = optax.tree_utils.tree_get(state, "mu")["w"]
    assert np.linalg.norm(np.asarray(mu)) == pytest.approx(0.1 * 0.5, rel=1e-5)  # (1 - b1) * clipped norm


def test_rate_table_is_the_schedule_bit_for_bit():
    cfg = _cfg(learning_rate=5e-3, warmup_ratio=0.05, schedule="cosine")
    schedule = jax.jit(optim.learning_rate_schedule(cfg, 97))
    table = optim.learning_rates(cfg, 97)
    assert table.dtype == np.float32 and table.shape == (97,) and table[0] == 0.0
    np.testing.assert_array_equal(table.view(np.uint32),
                                  [np.float32(schedule(np.int32(k))).view(np.uint32) for k in range(97)])


def test_equal_settings_share_one_optimizer_whatever_the_rate():
    assert optim.make_optimizer(_cfg(learning_rate=1e-3)) is optim.make_optimizer(_cfg(learning_rate=5e-2))
    assert optim.make_optimizer(_cfg(weight_decay=0.1)) is not optim.make_optimizer(_cfg(weight_decay=0.0))

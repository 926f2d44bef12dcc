"""Learning-rate warmup and decay (calrec_core.train.schedule) against closed forms."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from calrec_core.train.config import TrainConfig
from calrec_core.train.schedule import learning_rate_schedule


def reference(step, peak, warmup, kind, decay, final_ratio):
    if step < warmup:
        return peak * (step + 1) / warmup  # step 0 already trains
    t = min(step - warmup, decay) / decay if decay else 0.0
    if kind == "constant":
        return peak
    if kind == "linear":
        return peak + (final_ratio * peak - peak) * t
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear"])
@pytest.mark.parametrize("warmup", [0, 7])
def test_schedule_matches_closed_form(kind, warmup):
    config = TrainConfig.tiny().replace(learning_rate=3e-4, warmup_steps=warmup, lr_schedule=kind,
                                        lr_decay_steps=20, lr_final_ratio=0.1)
    schedule = learning_rate_schedule(config)
    for step in range(40):
        expected = reference(step, 3e-4, warmup, kind, 20, 0.1)
        assert float(schedule(jnp.asarray(step))) == pytest.approx(expected, rel=1e-5, abs=1e-12)


def test_paper_default_is_constant():
    schedule = learning_rate_schedule(TrainConfig.paper())
    values = [float(schedule(s)) for s in (0, 1, 10_000, 149_999)]
    assert values == pytest.approx([1e-4] * 4, rel=1e-6)


def test_decay_needs_its_length():
    with pytest.raises(ValueError, match="lr_decay_steps"):
        TrainConfig.tiny().replace(lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_schedule"):
        TrainConfig.tiny().replace(lr_schedule="step")


def test_optimizer_follows_the_schedule():
    """Adam's first update is lr * sign(gradient): a quarter of the peak at warmup step 0 (never
    zero), then the schedule."""
    from calrec_core.train.step import make_optimizer

    config = TrainConfig.tiny().replace(learning_rate=1e-2, warmup_steps=4, grad_clip_norm=0.0)
    optimizer = make_optimizer(config)
    params = {"w": jnp.ones(3)}
    state = optimizer.init(params)
    grads = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    # Step 0: lr = 1e-2 * 1/4; Adam's bias-corrected ratio is sign(g) for a constant gradient.
    updates, state = optimizer.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], -2.5e-3 * np.sign(grads["w"]), rtol=1e-4)
    updates, state = optimizer.update(grads, state, params)
    np.testing.assert_allclose(updates["w"], -5e-3 * np.sign(grads["w"]), rtol=1e-4)

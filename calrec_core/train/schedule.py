"""Learning-rate schedule: linear warmup, then constant (the paper, §4: lr 1e-4), cosine or
linear decay. A quality lever; the exported model's train_config records which one trained it.
"""

from __future__ import annotations

import optax

from calrec_core.train.config import LR_SCHEDULES, TrainConfig


def learning_rate_schedule(config: TrainConfig) -> optax.Schedule:
    """Step -> learning rate.

    Steps 0 .. warmup_steps - 1 rise linearly, step s at (s + 1) / warmup_steps of
    learning_rate, so the first step already trains and the last warmup step reaches the peak
    (0 warmup steps: learning_rate from step 0); then "constant" holds it, while "cosine" and
    "linear" decay it over lr_decay_steps to lr_final_ratio * learning_rate and hold that
    value afterwards.
    """
    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; one of {LR_SCHEDULES}")
    peak = config.learning_rate
    final = config.lr_final_ratio * peak
    if config.lr_schedule == "constant":
        after = optax.constant_schedule(peak)
    elif config.lr_schedule == "cosine":
        after = optax.cosine_decay_schedule(peak, config.lr_decay_steps,
                                            alpha=config.lr_final_ratio)
    else:
        after = optax.linear_schedule(peak, final, config.lr_decay_steps)
    if not config.warmup_steps:
        return after
    steps = config.warmup_steps

    def warmup(count):
        return peak * (count + 1) / steps

    return optax.join_schedules([warmup, after], [config.warmup_steps])

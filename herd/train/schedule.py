"""Learning-rate schedules as a multiplier of the peak LR at each step (a pure function of the
step, so resuming needs nothing but the step count).

- warmup: linear from 1/warmup to 1 over `warmup_steps`;
- cosine: then half a cosine down to `min_lr_ratio` at the last step;
- wsd (warmup-stable-decay): flat at 1, then linear down to `min_lr_ratio` over the last
  `decay_fraction` of the run;
- constant: flat after warmup.
"""

from __future__ import annotations

import math

from herd.train.config import TrainConfig


def lr_multiplier(step: int, config: TrainConfig) -> float:
    """The multiplier for optimizer step `step` (0-based)."""
    c = config
    if step < c.warmup_steps:
        return (step + 1) / c.warmup_steps
    if c.schedule == "constant":
        return 1.0
    if c.schedule == "cosine":
        span = max(1, c.steps - c.warmup_steps - 1)
        progress = min(1.0, (step - c.warmup_steps) / span)
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    decay_start = max(c.warmup_steps, c.steps - round(c.decay_fraction * c.steps))
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start + 1) / max(1, c.steps - decay_start))
    return 1.0 - (1 - c.min_lr_ratio) * progress

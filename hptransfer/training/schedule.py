"""Learning-rate schedule: linear warmup, then linear or cosine decay to a final fraction.

The factor s(t) multiplies every tensor's LR (and so, under coupled weight decay, its decay).
Lingle's setup: warmup, then linear decay to 1e-4·α at the last step.

>>> [round(lr_factor(t, total_steps=5, hparams=HParams(warmup_fraction=0.4,
...       final_lr_fraction=0.0)), 3) for t in range(5)]
[0.5, 1.0, 1.0, 0.5, 0.0]
"""

from __future__ import annotations

import math

from hptransfer.hparams import HParams, Schedule

__all__ = ["lr_factor", "warmup_steps"]


def warmup_steps(total_steps: int, hparams: HParams) -> int:
    """Warmup length; at least one step is always left for the decay."""
    return min(round(hparams.warmup_fraction * total_steps), max(total_steps - 1, 0))


def lr_factor(step: int, *, total_steps: int, hparams: HParams) -> float:
    """s(t) for the 0-based optimizer step ``step`` of ``total_steps``.

    Warmup ramps 1/w, 2/w, …, 1 so the first step already moves the weights; decay runs
    from 1 at the first post-warmup step to ``final_lr_fraction`` at the last step.
    """
    warmup = warmup_steps(total_steps, hparams)
    if step < warmup:
        return (step + 1) / warmup
    decay_steps = total_steps - warmup - 1
    # a single post-warmup step trains at the peak rather than at the final fraction
    progress = (step - warmup) / decay_steps if decay_steps > 0 else 0.0
    final = hparams.final_lr_fraction
    if hparams.schedule is Schedule.LINEAR:
        return final + (1.0 - final) * (1.0 - progress)  # exactly `final` at the end
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress))

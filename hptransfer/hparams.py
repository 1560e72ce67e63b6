"""Optimization hyperparameters: what hptransfer tunes on proxies and transfers to targets.

``lr`` is the *base* learning rate α of docs/spec.md §2: the per-tensor rates are α times
the multipliers of :mod:`hptransfer.mup.rules`. ``weight_decay`` is λ, applied by the
chosen :class:`WeightDecay` convention (docs/spec.md §3) — the convention decides whether
λ transfers across width, so it is part of every record.

>>> HParams(lr=2**-6).schedule.value
'linear'
"""

from __future__ import annotations

from enum import Enum

from pydantic import Field

from hptransfer.spec import FrozenConfig

__all__ = ["MULTIPLIERS", "EpsRule", "HParams", "Optimizer", "Schedule", "WeightDecay"]

# The per-module multipliers: width-independent under µP (Tensor Programs V treats them as
# hyperparameters), so the ladder tunes them on its cheapest proxy and holds them.
MULTIPLIERS = ("embedding_lr_mult", "readout_mult")


class WeightDecay(str, Enum):
    """Per-step decay of a matrix under each convention (s(t) is the schedule factor).

    COUPLED: s(t)·lr_tensor·λ — PyTorch AdamW on µP-scaled LRs; width-dependent.
    COUPLED_SCALED: s(t)·α·λ — λ scaled by 1/lr-multiplier per tensor (microsoft/mup).
    INDEPENDENT: s(t)·λ — decoupled from α entirely (Lingle's ``use_iwd``, u-µP).
    """

    COUPLED = "coupled"
    COUPLED_SCALED = "coupled-scaled"
    INDEPENDENT = "independent"


class Schedule(str, Enum):
    """Decay after linear warmup, from α down to ``final_lr_fraction``·α."""

    LINEAR = "linear"
    COSINE = "cosine"


class Optimizer(str, Enum):
    ADAMW = "adamw"
    LION = "lion"


class EpsRule(str, Enum):
    """Adam ε per tensor: one constant, or scaled like the tensor's LR multiplier.

    At large width gradients shrink until a fixed ε dominates (Everett et al. 2024);
    scaling ε with the LR multiplier keeps ε/|g| width-independent.
    """

    CONSTANT = "constant"
    SCALED = "scaled"


class HParams(FrozenConfig):
    """Optimizer hyperparameters of one run. Defaults follow Lingle's ablation setup."""

    lr: float = Field(2.0**-6, gt=0, description="base learning rate α")
    embedding_lr_mult: float = Field(
        1.0, gt=0, description="the token embedding's LR is α times this (width-independent "
                               "under µP: tuned on the proxies, carried to the target)")
    readout_mult: float = Field(
        1.0, gt=0, description="output multiplier τ of the readout: its init std and its LR "
                               "are τ times the µP table's (under Adam and Lion exactly "
                               "logits × τ, microsoft/mup's output_mult; width-independent)")
    weight_decay: float = Field(0.0, ge=0, description="weight decay λ (0 disables it)")
    weight_decay_rule: WeightDecay = Field(WeightDecay.INDEPENDENT,
                                           description="weight decay convention (docs/spec.md §3)")
    batch_size: int = Field(32, gt=0, description="sequences per optimizer step")
    warmup_fraction: float = Field(0.1, ge=0, lt=1,
                                   description="fraction of steps spent in linear warmup")
    schedule: Schedule = Field(Schedule.LINEAR, description="decay after warmup")
    final_lr_fraction: float = Field(1e-4, ge=0, le=1,
                                     description="final LR as a fraction of the peak")
    optimizer: Optimizer = Field(Optimizer.ADAMW, description="optimizer")
    beta1: float = Field(0.9, ge=0, lt=1, description="first-moment decay")
    beta2: float = Field(0.98, ge=0, lt=1, description="second-moment decay")
    eps: float = Field(1e-9, gt=0, description="Adam epsilon (unused by Lion)")
    eps_rule: EpsRule = Field(EpsRule.CONSTANT, description="per-tensor Adam epsilon")
    grad_clip: float = Field(1.0, ge=0, description="global gradient-norm clip (0 disables)")

    def multipliers_text(self) -> str:
        """The per-module multipliers in words, e.g. ``embedding LR ×1, readout ×2``."""
        return (f"embedding LR ×{self.embedding_lr_mult:g}, readout (output) "
                f"×{self.readout_mult:g}")

"""Step 2 of the transfer: each hparam's optimum against width, one :class:`TransferFit`.

Per hparam, log2(optimum) against log2(width) by weighted least squares (weights from each
width's bootstrap spread); the slope is the drift in octaves per doubling of width, with a
bootstrap interval. A slope interval containing 0 means µP transfer holds: the prediction is
the weighted mean (constant model). Otherwise it is extrapolated log-linearly. A
leave-one-width-out check predicts each width from the others. Judging the fits (which
width rule, the drift alarm) belongs to :mod:`hptransfer.transfer.rules`.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
from pydantic import Field

from hptransfer.mup.rules import coupled_decay_scale, weight_decay_depends_on_width
from hptransfer.spec import FrozenConfig
from hptransfer.study.config import StudyConfig
from hptransfer.study.optimum import WidthFit, percentiles, zero_code

__all__ = ["TransferFit", "TransferModel", "coupled", "transfer_fits"]

MIN_SPREAD = 0.05  # octaves: floor of a width's bootstrap spread in the WLS weights


class TransferModel(str, Enum):
    CONSTANT = "constant"  # µP holds: the optimum does not move with width
    LOG_LINEAR = "log-linear"  # the optimum drifts: log2 opt = a + slope · log2 width


class TransferFit(FrozenConfig):
    """One hparam's optimum against width: log2(opt) = a + slope · log2(width)."""

    hparam: str
    model: TransferModel
    slope: float = Field(description="octaves the optimum moves per doubling of width")
    slope_interval: tuple[float, float]
    target: float = Field(description="predicted value at the target width, before the "
                                      "beyond-width rules")
    target_interval: tuple[float, float]
    leave_one_out: dict[int, float] = Field(
        description="width → error in octaves when predicting it from the other widths")


def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray):
    """WLS slope and weighted means; ``y`` may be (..., k) for many fits at once."""
    xm = (w * x).sum() / w.sum()
    ym = (y * w).sum(axis=-1) / w.sum()
    spread = (w * (x - xm) ** 2).sum()
    if spread == 0:  # one width: no slope to see
        return np.zeros_like(ym), ym, xm
    slope = ((y - ym[..., None]) * (w * (x - xm))).sum(axis=-1) / spread
    return slope, ym, xm


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted median along the last axis of ``values`` (..., k), one weight per column."""
    order = np.argsort(values, axis=-1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=-1)
    cumulative = np.cumsum(weights[order], axis=-1)
    index = (cumulative < cumulative[..., -1:] / 2).sum(axis=-1, keepdims=True)
    return np.take_along_axis(ranked, index, axis=-1)[..., 0]


def _fit_across(hparam: str, widths: list[int], points: np.ndarray, samples: np.ndarray,
                target_width: int, *, bounds: tuple[float, float] | None = None
                ) -> TransferFit:
    """``points``: (k,) per-width optima in log2 units; ``samples``: (k, B) bootstraps.

    The constant model is the weighted mean for the LR, and the weighted median for weight
    decay and batch size, whose optima are choices that were tried (λ = 0 among them): a
    mean of "no decay" and "λ = 1e-3" is neither. ``bounds`` (the searched range) clamps the
    constant model: it does not extrapolate.
    """
    x, xt = np.log2(widths), math.log2(target_width)
    weights = 1.0 / np.maximum(samples.std(axis=1), MIN_SPREAD) ** 2
    slope, mean, xm = _weighted_line(x, points, weights)
    slopes, means, _ = _weighted_line(x, samples.T, weights)
    slope_interval = percentiles(slopes)
    constant = slope_interval[0] <= 0.0 <= slope_interval[1]
    median = hparam != "lr"

    def centre(values: np.ndarray, w: np.ndarray) -> np.ndarray:
        if median:
            return _weighted_median(values, w)
        return (values * w).sum(axis=-1) / w.sum()

    if constant:
        target, targets = float(centre(points, weights)), centre(samples.T, weights)
        residuals, dof = points - target, len(widths) - 1
    else:
        target, targets = float(mean + slope * (xt - xm)), means + slopes * (xt - xm)
        residuals, dof = points - (mean + slope * (x - xm)), len(widths) - 2
    # widths that disagree beyond their own spreads: widen by the Birge ratio √(χ²/dof)
    if dof > 0 and not median:
        birge = math.sqrt(max(1.0, float((weights * residuals**2).sum()) / dof))
        targets = target + (targets - target) * birge
    low, high = percentiles(targets)
    low, high = min(low, target), max(high, target)
    if constant and bounds is not None:
        target, low, high = (float(np.clip(v, *bounds)) for v in (target, low, high))

    leave_one_out = {}
    for i, width in enumerate(widths):
        rest = np.arange(len(widths)) != i
        s, m, c = _weighted_line(x[rest], points[rest], weights[rest])
        if constant or rest.sum() < 2:
            guess = centre(points[rest], weights[rest])
        else:
            guess = m + s * (x[i] - c)
        leave_one_out[width] = float(guess - points[i])
    return TransferFit(hparam=hparam, model=TransferModel.CONSTANT if constant else
                       TransferModel.LOG_LINEAR, slope=float(slope),
                       slope_interval=slope_interval, target=target,
                       target_interval=(low, high), leave_one_out=leave_one_out)


def transfer_fits(fits: list[WidthFit], config: StudyConfig, target_width: int
                  ) -> tuple[dict[str, TransferFit], float]:
    """One :class:`TransferFit` per searched hparam, and λ = 0's code in the fits' units."""
    widths = [f.evidence.width for f in fits]
    zero = zero_code(config) if config.space.weight_decay is not None else 0.0
    transfer: dict[str, TransferFit] = {}
    for hparam in (h for h in ("lr", "weight_decay", "batch_size") if h in
                   config.space.searched):
        points = np.array([f.codes[hparam][0] for f in fits])
        samples = np.stack([f.codes[hparam][1] for f in fits])
        if hparam == "weight_decay" and coupled(config):
            # coupled λ under µP decays a hidden matrix by s·(α/m)·λ per step: compare widths
            # in base-width units λ·M₀/M (the target gets ×m back: the λ·m correction);
            # λ = 0 moves below every shifted code so it stays recognisable
            shifts = np.log2([coupled_decay_scale(config.spec_at(w)) for w in widths])
            original_zero, zero = zero, zero - max(0.0, float(shifts.max()))
            points = np.where(points < original_zero + 0.5, zero, points - shifts)
            samples = np.where(samples < original_zero + 0.5, zero, samples - shifts[:, None])
        bounds = None
        if hparam == "weight_decay":
            target_shift = (math.log2(coupled_decay_scale(config.spec_at(target_width)))
                            if coupled(config) else 0.0)
            bounds = (zero, math.log2(config.space.weight_decay[1]) - target_shift)
        elif hparam == "batch_size":
            bounds = (math.log2(min(config.space.batch_sizes)),
                      math.log2(max(config.space.batch_sizes)))
        transfer[hparam] = _fit_across(hparam, widths, points, samples, target_width,
                                       bounds=bounds)
    return transfer, zero


def coupled(config: StudyConfig) -> bool:
    """Whether the study's λ decays hidden matrices less at larger widths (coupled λ under
    µP), so that optima must be compared in base-width units."""
    return weight_decay_depends_on_width(config.spec, config.space.base.weight_decay_rule)

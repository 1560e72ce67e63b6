"""Step 2 of the transfer: each hparam's optimum against width, one :class:`TransferFit`.

Per hparam, log2(optimum) against log2(width) by weighted least squares (weights from each
width's bootstrap spread); the slope is the drift in octaves per doubling of width, with a
bootstrap interval. A slope interval containing 0 means µP transfer holds: the prediction is
the weighted mean (constant model). Otherwise it is extrapolated: under µP, a modest LR
drift as a finite-width correction that dies out like 1/width (converging model, see
``CONVERGING_MAX_SLOPE``); else log-linearly. A leave-one-width-out check predicts each
width from the others. Judging the fits (which
width rule, the drift alarm) belongs to :mod:`hptransfer.transfer.rules`.
"""

from __future__ import annotations

import math
from enum import Enum

import numpy as np
from pydantic import Field

from hptransfer.mup.rules import coupled_decay_scale, weight_decay_depends_on_width
from hptransfer.spec import FrozenConfig, Parametrization
from hptransfer.study.config import StudyConfig
from hptransfer.study.optimum import WidthFit, percentiles, zero_code

__all__ = ["CONVERGING_MAX_SLOPE", "TransferFit", "TransferModel", "coupled", "transfer_fits"]

MIN_SPREAD = 0.05  # octaves: floor of a width's bootstrap spread in the WLS weights


class TransferModel(str, Enum):
    CONSTANT = "constant"  # µP holds: the optimum does not move with width
    CONVERGING = "converging"  # µP at small widths: log2 opt = a + c / width → a
    LOG_LINEAR = "log-linear"  # the optimum drifts: log2 opt = a + slope · log2 width


# Under µP the optimum has an infinite-width limit, and the proxies' finite widths move it
# by a correction that shrinks like 1/width (the leading order of a 1/width expansion about
# that limit: Yaida 2022, Roberts, Yaida & Hanin 2022; the smallest proxies of Lingle 2024
# drift where the wider ones do not). So a µP LR drift that is established but modest is
# extrapolated as that correction, not as a log-linear trend that never stops. A drift
# steeper than this is no finite-width correction (SP drifts about 1 octave per doubling):
# it stays log-linear, and the drift alarm sounds.
CONVERGING_MAX_SLOPE = 0.75


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
    limit: float | None = Field(None, description="the converging model's infinite-width "
                                                  "optimum (log2); None for the others")
    at_widest: float = Field(0.0, description="the model's value at the widest proxy (log2)")


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


def _converging(widths: list[int], points: np.ndarray, weights: np.ndarray,
                target_width: int) -> np.ndarray:
    """The converging model's value at ``target_width``: WLS of ``points`` (..., k) on
    1/width, read at 1/target_width."""
    u = 1.0 / np.asarray(widths, float)
    c, mean, um = _weighted_line(u, points, weights)
    return mean + c * (1.0 / target_width - um)


def _fit_across(hparam: str, widths: list[int], points: np.ndarray, samples: np.ndarray,
                target_width: int, *, bounds: tuple[float, float] | None = None,
                converges: bool = False) -> TransferFit:
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

    model = TransferModel.CONSTANT if constant else TransferModel.LOG_LINEAR
    if not constant and converges and abs(slope) <= CONVERGING_MAX_SLOPE:
        # two widths fit either model exactly: µP's prior decides; three or more widths
        # can show a trend that does not flatten out, and then it is log-linear
        line = points - (mean + slope * (x - xm))
        bend = points - np.array([_converging(widths, points, weights, w) for w in widths])
        if len(widths) < 3 or (weights * bend**2).sum() <= (weights * line**2).sum():
            model = TransferModel.CONVERGING
    if constant:
        target, targets = float(centre(points, weights)), centre(samples.T, weights)
        residuals, dof = points - target, len(widths) - 1
    elif model is TransferModel.CONVERGING:
        target = float(_converging(widths, points, weights, target_width))
        targets = _converging(widths, samples.T, weights, target_width)
        residuals = points - np.array([_converging(widths, points, weights, w) for w in widths])
        dof = len(widths) - 2
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
        elif model is TransferModel.CONVERGING:
            guess = _converging([w for j, w in enumerate(widths) if rest[j]], points[rest],
                                weights[rest], width)
        else:
            guess = m + s * (x[i] - c)
        leave_one_out[width] = float(guess - points[i])
    widest = max(widths)
    if model is TransferModel.CONVERGING:
        at_widest = float(_converging(widths, points, weights, widest))
        limit = float(_converging(widths, points, weights, 10**12))
    else:
        at_widest, limit = float(mean + slope * (math.log2(widest) - xm)), None
        if constant:
            at_widest = target
    return TransferFit(hparam=hparam, model=model, slope=float(slope), limit=limit,
                       at_widest=at_widest,
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
        transfer[hparam] = _fit_across(
            hparam, widths, points, samples, target_width, bounds=bounds,
            converges=hparam == "lr" and config.spec.param is not Parametrization.SP)
    return transfer, zero


def coupled(config: StudyConfig) -> bool:
    """Whether the study's λ decays hidden matrices less at larger widths (coupled λ under
    µP), so that optima must be compared in base-width units."""
    return weight_decay_depends_on_width(config.spec, config.space.base.weight_decay_rule)

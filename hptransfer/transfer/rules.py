"""Step 3 of the transfer: the named rules from the proxies to the target, each a :class:`Rule`.

Every rule applied is recorded with its reason and every doubt becomes a warning:

- the width rule of each hparam: constant (no drift established), converging (µP's
  finite-width correction) or log-linear drift, announced loudly beyond
  ``DRIFT_THRESHOLD`` (and a constant whose slope estimate is that large gets a loud "not
  established" warning), with loose slopes and leave-one-width-out misses;
- the stability bound: the LR stays below the smallest LR that diverged at any width;
- beyond width: weight decay by the study's convention (docs/spec.md §3), a different
  target batch (√k) and a longer horizon (η* ∝ D^−β). Depth: a study whose spec uses the
  CompleteP depth rule transfers across depth unchanged (rule ``depth-completep``); any
  other study gets a warning from the predictor (:mod:`hptransfer.transfer.predictor`).
"""

from __future__ import annotations

import math

from hptransfer.hparams import HParams, WeightDecay
from hptransfer.mup.rules import coupled_decay_scale
from hptransfer.spec import FrozenConfig, ModelSpec, NormGain, Parametrization
from hptransfer.study.config import StudyConfig
from hptransfer.transfer.fit import TransferFit, TransferModel, coupled

__all__ = ["Notes", "Rule", "judge_width_fits", "lr_at_target", "weight_decay_at_target"]

# ---- the choices, each with its reason ------------------------------------------------------

# Drift alarm: a slope that exceeds 0.25 octave per doubling (its interval excluding 0: a
# fitted drift; including 0: transfer not established)
# moves the optimum by 1–1.5 octaves over the 4–6 doublings of a typical proxy → target
# extrapolation: more than the half-octave a µP prediction should be good to.
DRIFT_THRESHOLD = 0.25
# Warn when the slope interval, carried over the doublings to the target, allows the
# optimum to move more than this many octaves (the proxies do not pin the slope down).
EXTRAPOLATION_SPREAD_WARN = 1.0
LOO_WARN = 0.5  # octaves: a leave-one-width-out miss beyond this is reported
# The converging model (transfer/fit.py) extrapolates a correction the proxies only saw
# the start of: beyond half an octave past the widest proxy that is worth a warning.
CONVERGING_SHIFT_WARN = 0.5
# Horizon: at fixed batch the optimal LR falls like D^−β as training gets longer. β = 0.3 is
# a *default*, not fitted: Bjorck et al. 2025 ("Scaling Optimal LR Across Token Horizons",
# ICLR 2025, arXiv 2409.19913) fit LR*(D) = B·D^−β with β of about 0.3 on their LLMs, and
# Filatov et al. 2025 (arXiv 2510.03871) measure η*(D) ∝ D^−0.28. A study holds one budget,
# so β cannot be fitted from it: a measured β is passed in (``horizon_exponent``), e.g. from
# a steps study such as studies/horizon.toml, whose drift per doubling of tokens is −β.
HORIZON_EXPONENT = 0.3
# A β outside this range is not a horizon rule but a mistake (a sign error, or a drift per
# doubling read as a per-decade slope): the optimum does not grow with the budget, and
# β = 1 already keeps the total LR·steps constant.
HORIZON_EXPONENT_RANGE = (0.0, 1.0)


class Rule(FrozenConfig):
    """A rule applied to go from the proxies to the target."""

    name: str
    detail: str


class Notes:
    """Rules applied and warnings, gathered while the prediction is assembled."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.warnings: list[str] = []

    def rule(self, name: str, detail: str) -> None:
        self.rules.append(Rule(name=name, detail=detail))


_NAMES = {"lr": "LR", "weight_decay": "weight decay", "batch_size": "batch size"}


def judge_width_fits(transfer: dict[str, TransferFit], config: StudyConfig,
                     target_width: int, largest: int, notes: Notes) -> None:
    """Name the width rule of every hparam; warn on drift, loose slopes and LOO misses."""
    doublings = math.log2(target_width / largest)
    for hparam, fit in transfer.items():
        (low, high), what = fit.slope_interval, _NAMES[hparam]
        if fit.model is TransferModel.CONSTANT:
            notes.rule(f"width-constant:{hparam}",
                       f"{what}: the slope interval [{low:+.2f}, {high:+.2f}] octave per "
                       f"doubling contains 0, so no drift is established: the weighted "
                       f"{'mean' if hparam == 'lr' else 'median'} of the widths' optima")
            if hparam == "lr" and abs(fit.slope) > DRIFT_THRESHOLD:
                # a large slope whose interval still reaches 0 (too few widths to be sure):
                # not evidence of transfer, and the user must hear it as loudly as a drift
                notes.warnings.append(
                    f"transfer is not established for this parametrization: the optimum LR "
                    f"moves {fit.slope:+.2f} octaves per doubling of width (95% interval "
                    f"[{low:+.2f}, {high:+.2f}], which still includes 0); the prediction "
                    f"keeps the optimum constant, which is wrong if the drift is real: tune "
                    f"a wider proxy width to settle it"
                    + _drift_causes(config.spec, config.space.base))
            spread = max(abs(low), abs(high)) * abs(doublings)
            if hparam == "lr" and spread > EXTRAPOLATION_SPREAD_WARN:
                notes.warnings.append(
                    f"the proxies pin the LR slope only to [{low:+.2f}, {high:+.2f}] octave "
                    f"per doubling; over the {doublings:.1f} doublings to width {target_width} "
                    f"that allows the optimum to move up to {spread:.1f} octaves: add a "
                    f"wider proxy width or more trials to narrow it")
        elif fit.model is TransferModel.CONVERGING:
            shift = fit.target - fit.at_widest
            notes.rule(f"width-converging:{hparam}",
                       f"{what}: the optimum moves {fit.slope:+.2f} octave per doubling "
                       f"between the proxies (interval [{low:+.2f}, {high:+.2f}]); under µP "
                       f"that is a finite-width correction, shrinking like 1/width towards "
                       f"2^{fit.limit:.2f} at infinite width: {shift:+.2f} octave from the "
                       f"widest proxy to width {target_width}")
            if abs(shift) > CONVERGING_SHIFT_WARN:
                notes.warnings.append(
                    f"the finite-width correction moves the LR {shift:+.2f} octaves beyond the "
                    f"widest proxy ({largest}): a wider proxy width would pin it")
        else:
            notes.rule(f"width-log-linear:{hparam}",
                       f"{what}: the optimum drifts {fit.slope:+.2f} octave per doubling "
                       f"(interval [{low:+.2f}, {high:+.2f}] excludes 0); extrapolated "
                       f"log-linearly over {doublings:.1f} doublings")
            if abs(fit.slope) > DRIFT_THRESHOLD:
                subject = "the optimum LR" if hparam == "lr" else f"the {what} optimum"
                notes.warnings.append(
                    f"transfer is not holding for this parametrization: {subject} moves "
                    f"{fit.slope:+.2f} octaves per doubling of width (95% interval "
                    f"[{low:+.2f}, {high:+.2f}]); the prediction extrapolates this drift"
                    + _drift_causes(config.spec, config.space.base))
        width, miss = max(fit.leave_one_out.items(), key=lambda kv: abs(kv[1]))
        # a two-parameter model left with one width cannot be refitted: its leave-one-out
        # falls back to a constant and only restates the drift the rule already names
        testable = fit.model is TransferModel.CONSTANT or len(fit.leave_one_out) >= 3
        if hparam == "lr" and testable and abs(miss) > LOO_WARN:
            notes.warnings.append(f"leave-one-width-out: predicting width {width}'s LR optimum "
                                  f"from the other widths misses by {miss:+.2f} octaves")


def _drift_causes(spec: ModelSpec, hparams: HParams) -> str:
    causes = []
    if spec.param is Parametrization.SP:
        causes.append("the standard parametrization (one global LR)")
    if spec.norm_gain is not NormGain.NONE:
        causes.append("trainable norm gains (they broke transfer in Lingle 2024)")
    if hparams.weight_decay_rule is WeightDecay.COUPLED and hparams.weight_decay > 0:
        causes.append("coupled weight decay (its per-step decay shrinks with width)")
    return ("; suspects in this study's spec: " + ", ".join(causes)) if causes else ""


def lr_at_target(fit: TransferFit, bounds: list[float], *, proxy_batch: int,
                 target_batch: int | None, proxy_tokens: int, target_tokens: int | None,
                 horizon_exponent: float | None, notes: Notes) -> tuple[float, float, float]:
    """log2 of the target LR and its interval: the width fit, then the stability bound,
    batch and horizon rules (each multiplies the LR, so it shifts the whole interval)."""
    code, (low, high) = fit.target, fit.target_interval
    if bounds and fit.model is TransferModel.CONSTANT and code >= math.log2(min(bounds)):
        cap = math.log2(min(bounds))
        notes.rule("divergence-cap",
                   f"LR set half an octave below 2^{cap:.2f}, the smallest LR that diverged "
                   f"at any proxy width (under µP the stable region transfers too)")
        code, high = cap - 0.5, min(high, cap)
        low = min(low, code)
    shift = 0.0
    if target_batch is not None and target_batch != proxy_batch:
        k = target_batch / proxy_batch
        shift += 0.5 * math.log2(k)
        notes.rule("batch-sqrt",
                   f"target batch {target_batch} is {k:g}× the proxies' optimum {proxy_batch}: "
                   f"LR × √{k:g} = ×{math.sqrt(k):.3g} (Adam below the critical batch, "
                   f"docs/spec.md §4; the paper's 4× batch ablations moved the grid this way)")
    if target_tokens is not None and target_tokens != proxy_tokens:
        ratio = target_tokens / proxy_tokens
        beta = HORIZON_EXPONENT if horizon_exponent is None else horizon_exponent
        source = ("a literature default, Bjorck et al. 2025, not fitted: the study has one "
                  "budget; pass a measured one with --horizon-exponent"
                  if horizon_exponent is None else "given (--horizon-exponent)")
        factor = ratio**-beta
        shift += math.log2(factor)
        notes.rule("horizon-power-law",
                   f"target trains on {target_tokens:,} tokens, {ratio:.3g}× the proxies' "
                   f"{proxy_tokens:,}: LR × {ratio:.3g}^−{beta:g} = ×{factor:.3g} "
                   f"(η* ∝ D^−β; β = {beta:g} is {source}). The interval leaves out the "
                   f"rule's own uncertainty; batch is not scaled with the horizon (pass "
                   f"--target-batch; Step Law: B ∝ D^0.571)")
    return code + shift, low + shift, high + shift


def weight_decay_at_target(fit: TransferFit | None, zero: float, config: StudyConfig,
                           target_width: int, notes: Notes
                           ) -> tuple[float, tuple[float, float] | None]:
    """λ at the target by the study's convention (docs/spec.md §3), and its interval."""
    base = config.space.base
    if fit is None and base.weight_decay == 0:
        return 0.0, None
    m = coupled_decay_scale(config.spec_at(target_width))
    if coupled(config):
        notes.rule("weight-decay-coupled-xm",
                   f"coupled λ: per-step decay s(t)·(α/m)·λ shrinks with width under µP; "
                   f"proxy optima were compared as λ·M₀/M and multiplied by m = {m:g} at the "
                   f"target (λ·m correction)")
        notes.warnings.append(
            f"weight decay convention is coupled: under µP its effective decay shrinks like "
            f"1/m with width, so λ does not transfer as is; the prediction applies λ·m "
            f"(m = {m:g}). Prefer --weight-decay-rule independent (docs/spec.md §3)")
    else:
        rule = base.weight_decay_rule
        how = {WeightDecay.INDEPENDENT: "per-step decay s(t)·λ",
               WeightDecay.COUPLED_SCALED: "per-step decay s(t)·α·λ",
               WeightDecay.COUPLED: "coupled decay with one global LR (SP)"}[rule]
        notes.rule(f"weight-decay-{rule.value}",
                   f"{rule.value} λ: {how} does not depend on width, so λ transfers unchanged")
    if fit is None:  # not searched: the fixed λ, which the coupled warning covers
        return base.weight_decay, None
    shift = math.log2(m) if coupled(config) else 0.0

    def decode(code: float) -> float:
        return 0.0 if code < zero + 0.5 else 2.0 ** (code + shift)

    return decode(fit.target), (decode(fit.target_interval[0]),
                                decode(fit.target_interval[1]))

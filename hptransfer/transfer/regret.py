"""Expected regret: the loss a user should expect to give up at the predicted LR.

An interval in octaves does not say what a miss costs; the bowl's curvature does. Near its
minimum the loss is L* (1 + κ (x − x*)²) in x = log2(lr), with κ the relative curvature
each width's parabola measures (:class:`~hptransfer.study.optimum.WidthEvidence`). Reading
the 95% interval [lo, hi] of the prediction x̂ as a two-sided normal (σ₋ = (x̂ − lo)/1.96,
σ₊ = (hi − x̂)/1.96), the expected relative regret is κ (σ₋² + σ₊²)/2, and at the
interval's ends κ (x̂ − lo)² and κ (hi − x̂)². κ is the widest proxy's: under µP the bowl's
shape transfers like its position. The quadratic understates a cliff on the high-LR side
(a bowl that ends in a wall), which is why the report also shows the regret at each end.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import Field

from hptransfer.spec import FrozenConfig
from hptransfer.study.optimum import WidthEvidence

__all__ = ["ExpectedRegret", "describe", "expected_regret"]

_Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


class ExpectedRegret(FrozenConfig):
    """The relative loss expected at the prediction, and at its interval's ends."""

    expected: float = Field(description="expected relative regret over the interval")
    at_low: float = Field(description="relative regret if the optimum is the interval's low end")
    at_high: float = Field(description="relative regret if it is the interval's high end")
    curvature: float = Field(description="relative loss per octave² of LR used")
    from_width: int = Field(description="the proxy width whose bowl gave the curvature")


def expected_regret(widths: Sequence[WidthEvidence], lr: float,
                    interval: tuple[float, float]) -> ExpectedRegret | None:
    """The regret of predicting ``lr`` with 95% ``interval`` (both in log2 units), from
    the widest width with a fitted bowl; None when no width has one."""
    bowls = [w for w in widths if w.curvature is not None and w.curvature > 0]
    if not bowls:
        return None
    widest = max(bowls, key=lambda w: w.width)
    kappa = widest.curvature
    below, above = max(0.0, lr - interval[0]), max(0.0, interval[1] - lr)
    expected = kappa * ((below / _Z95) ** 2 + (above / _Z95) ** 2) / 2
    return ExpectedRegret(expected=expected, at_low=kappa * below**2,
                          at_high=kappa * above**2, curvature=kappa,
                          from_width=widest.width)


def describe(regret: ExpectedRegret) -> str:
    """One line for people: ``expected regret 0.31% (1.2% / 0.9% at the interval's ends)``."""
    def pct(x: float) -> str:
        return f"{100 * x:.2f}%" if x < 0.1 else f"{100 * x:.0f}%"

    return (f"expected regret {pct(regret.expected)} of the loss ({pct(regret.at_low)} if the "
            f"optimum is the interval's low end, {pct(regret.at_high)} if its high end), from "
            f"width {regret.from_width}'s bowl ({pct(regret.curvature)} per octave²)")



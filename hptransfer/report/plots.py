"""The figures of hptransfer: the µTransfer plot, the LR optimum against width, the coord check.

Under µP the µTransfer plot's bowls line up: their minima sit at the same base LR at every
width, and wider is better (lower) at every LR. Diverged trials are drawn as crosses above
the curves; pruned ones are left out (their loss is from an unfinished schedule).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from hptransfer.study.schema import TrialRecord, TrialStatus

if TYPE_CHECKING:
    from hptransfer.checks.coord_check import CoordCheckReport
    from hptransfer.confirmation.verdict import Confirmation
    from hptransfer.transfer.prediction import Prediction

__all__ = ["coord_check_figure", "optimum_figure", "transfer_figure"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: never a window
    import matplotlib.pyplot as plt

    return plt


def transfer_figure(name: str, records: list[TrialRecord], *, axis: str = "width",
                    prediction: Prediction | None = None,
                    confirmation: Confirmation | None = None):
    """Validation loss against the base LR, one line per width (``axis`` names what the
    ``width`` of the records stands for in a depth or steps study). A width's line joins
    its trials of one seed (the most common); seed replicates are hollow markers. Given a
    ``prediction`` and its ``confirmation``, the target's runs are drawn as a line of their
    own, with the predicted LR and its 95% interval."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    widths = sorted({r.width for r in records})
    cmap = plt.get_cmap("viridis", max(len(widths), 2))
    finite = [r.final_val_loss for r in records if r.status is TrialStatus.COMPLETE]
    if confirmation is not None:
        finite += [r.loss for r in confirmation.runs if r.loss is not None]
    top = max(finite) if finite else 1.0
    replicate_label = "another seed"
    for i, width in enumerate(widths):
        color = cmap(i)
        complete = [r for r in records
                    if r.width == width and r.status is TrialStatus.COMPLETE]
        seeds = [r.seed for r in complete]
        primary = max(set(seeds), key=seeds.count) if seeds else None
        main = [r for r in complete if r.seed == primary]
        done = sorted((r.hparams.lr, r.final_val_loss) for r in main)
        if done:
            lrs, losses = zip(*done, strict=True)
            # a line only when the trials differ in LR alone (an LR grid, the paper's
            # plot): when weight decay or batch size vary too, neighbours are not comparable
            others = {r.hparams.model_dump_json(exclude={"lr"}) for r in main}
            line = "-" if len(others) == 1 else "none"
            ax.plot(lrs, losses, marker="o", linestyle=line, alpha=0.8, color=color,
                    label=f"{axis} {width}")
            best = min(done, key=lambda p: p[1])
            ax.plot(*best, marker="*", markersize=14, color=color, markeredgecolor="black")
        replicates = [(r.hparams.lr, r.final_val_loss) for r in complete if r.seed != primary]
        if replicates:
            ax.plot(*zip(*replicates, strict=True), marker="o", linestyle="none",
                    markerfacecolor="none", color=color, label=replicate_label)
            replicate_label = None
        diverged = [r.hparams.lr for r in records if r.width == width
                    and r.status is TrialStatus.DIVERGED and r.hparams is not None]
        if diverged:
            ax.plot(diverged, [top] * len(diverged), marker="x", linestyle="none",
                    color=color)
    if prediction is not None:
        low, high = prediction.intervals["lr"]
        ax.axvspan(low, high, color="crimson", alpha=0.08)
        ax.axvline(prediction.hparams.lr, color="crimson", linestyle="--", linewidth=1,
                   label=f"prediction for {axis} {prediction.target_width} (95% interval)")
    if confirmation is not None:
        runs = sorted((r.lr, r.loss) for r in confirmation.runs if r.loss is not None)
        if runs:
            ax.plot(*zip(*runs, strict=True), marker="s", color="crimson",
                    label=f"{axis} {confirmation.target_width}: confirmation "
                          f"({confirmation.verdict.value})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("base learning rate α")
    ax.set_ylabel("validation loss")
    ax.set_title(f"µTransfer: {name} (★ best per {axis}, × diverged)")
    ax.grid(True, alpha=0.3)
    if widths:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def optimum_figure(name: str, prediction: Prediction,
                   confirmation: Confirmation | None = None):
    """The LR optimum of each proxy width (with its 95% interval) against width, the fit
    line of :mod:`hptransfer.transfer.fit`, the prediction at the target width and, given a
    :class:`~hptransfer.confirmation.verdict.Confirmation`, its best run's LR."""
    plt = _pyplot()

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    evidence = prediction.evidence.widths
    widths = [e.width for e in evidence]
    values = [e.optima["lr"].value for e in evidence]
    lows = [v - e.optima["lr"].interval[0] for v, e in zip(values, evidence, strict=True)]
    highs = [e.optima["lr"].interval[1] - v for v, e in zip(values, evidence, strict=True)]
    ax.errorbar(widths, values, yerr=[lows, highs], marker="o", linestyle="none", capsize=4,
                label="proxy optimum (95% interval)")
    fit = prediction.evidence.fits["lr"]
    target = prediction.target_width
    xs = [min(widths) * 2.0 ** (k / 8) for k in range(int(8 * math.log2(target / min(widths)))
                                                      + 1)] + [target]
    if fit.model.value == "converging":  # limit + c / width, through the widest proxy
        c = (fit.at_widest - fit.limit) * max(widths)
        ys = [2.0 ** (fit.limit + c / x) for x in xs]
    else:
        slope = fit.slope if fit.model.value == "log-linear" else 0.0
        ys = [2.0 ** (fit.target + slope * math.log2(x / target)) for x in xs]
    ax.plot(xs, ys, linestyle="--", color="gray",
            label=f"fit ({fit.model.value}, slope {fit.slope:+.2f} octave/doubling)")
    low, high = prediction.intervals["lr"]
    lr = prediction.hparams.lr
    ax.errorbar([target], [lr], yerr=[[lr - low], [high - lr]], marker="*", markersize=14,
                color="crimson", capsize=4, linestyle="none",
                label=f"prediction at width {target}")
    best = confirmation and next((r for r in confirmation.runs
                                  if r.offset == confirmation.best_offset), None)
    if best is not None:
        ax.plot([target], [best.lr], marker="D", color="green", linestyle="none",
                label=f"best confirmation run ({confirmation.verdict.value})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("optimal base learning rate α")
    ax.set_title(f"LR optimum vs width: {name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def coord_check_figure(report: CoordCheckReport):
    """Mean |activation| against width, one panel per step, one line per module type."""
    plt = _pyplot()
    modules = sorted({p.module for p in report.points})
    fig, axes = plt.subplots(1, report.steps, figsize=(3.2 * report.steps, 3.2),
                             sharey=True, squeeze=False)
    for t, ax in enumerate(axes[0], start=1):
        for name in modules:
            pts = sorted((p.width, p.mean_abs, p.low, p.high) for p in report.points
                         if p.module == name and p.step == t)
            widths, means = [p[0] for p in pts], [p[1] for p in pts]
            (line,) = ax.plot(widths, means, marker="o", label=name)
            if report.seeds > 1 and all(p[2] is not None for p in pts):
                # the seeds' spread: the line is their mean
                ax.fill_between(widths, [p[2] for p in pts], [p[3] for p in pts],
                                color=line.get_color(), alpha=0.2, linewidth=0)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(f"t = {t}")
        ax.set_xlabel("width")
    axes[0][0].set_ylabel("mean |activation|")
    axes[0][-1].legend(fontsize=7)
    verdict = "PASS" if report.passed else "FAIL"
    model = "" if report.spec.model == "builtin" else f"{report.spec.model}, "
    seeds = f", {report.seeds} seeds (band: their spread)" if report.seeds > 1 else ""
    fig.suptitle(f"coord check, {model}{report.param.value}, lr {report.lr:g}{seeds}: "
                 f"{verdict}")
    fig.tight_layout()
    return fig

"""Running a reproduction study, its recorded result, and the paper-style table.

:func:`run_study` tunes every point of a :class:`~hptransfer.reproduction.ablation.Study` with the
grid
sampler (each LR octave once, at every axis value) through :func:`hptransfer.study.tune.tune`,
so the Optuna storage is the record, as for any tune, and a rerun only trains what is
missing. After each point it rewrites the study's :class:`StudyResult` — a small JSON file
(``studies/results/<name>.json``, committed) of every cell's loss and cost — atomically, so
the table rebuilds without the database.

:func:`tabulate` turns a result into a :class:`StudyTable`: loss per axis value × LR, the
argmin per value, the paper's verdict rule ("Transfer: Yes" iff the argmin is the same at
every value) and our fitted drift per doubling with its 95% interval, from the predictor's
own machinery (the per-width quadratic of :mod:`hptransfer.transfer.optimum` and the
across-width fit of :mod:`hptransfer.transfer.fit`): what the paper's yes/no hides.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from pydantic import Field

from hptransfer.reproduction.ablation import Ablation, Axis, PaperVerdict, Setting, Study
from hptransfer.spec import FrozenConfig
from hptransfer.study.ledger import StudyConfig, TrialRecord, TrialStatus
from hptransfer.study.storage import write_atomic

if TYPE_CHECKING:
    from hptransfer.data.corpus import Corpus

__all__ = ["Cell", "Row", "StudyResult", "StudyTable", "empty_result", "load_result",
           "result_from_storage", "run_study", "tabulate", "write_plot"]

BOOTSTRAP = 1000  # resamples behind each interval, as in the predictor
_FINISHED = (TrialStatus.COMPLETE, TrialStatus.DIVERGED, TrialStatus.PRUNED, TrialStatus.ERROR)


class Cell(FrozenConfig):
    """One trained (axis value, LR) cell: what it trained and what came of it."""

    width: int
    depth: int
    steps: int
    tokens: int
    lr_exponent: int
    lr: float
    status: TrialStatus
    val_loss: float | None
    flops: float
    wall_time_s: float

    def value(self, axis: Axis) -> int:
        return getattr(self, axis.value)


class StudyResult(FrozenConfig):
    """The recorded result of one study (``studies/results/<name>.json``)."""

    name: str
    title: str
    paper: PaperVerdict
    paper_note: str
    axis: Axis
    values: tuple[int, ...]
    lr_exponents: tuple[int, ...]
    setting: Setting
    ablation: Ablation
    config: StudyConfig = Field(description="the first point's study config (the others "
                                            "differ only in depth or budget)")
    corpus_hash: str
    cells: tuple[Cell, ...]
    updated: str = Field(description="UTC time the file was written")

    @property
    def planned(self) -> int:
        return len(self.values) * len(self.lr_exponents)


# ---- running ----------------------------------------------------------------------------------

def empty_result(study: Study) -> StudyResult:
    """The result of a study that has not run: no cells (the config is what would run,
    with no corpus hash)."""
    point = study.points[0]
    config = StudyConfig(spec=point.spec, budget=point.budget, seed=point.seed, corpus_hash="",
                         data=point.data, space=point.space)
    return StudyResult(name=study.name, title=study.title, paper=study.paper,
                       paper_note=study.paper_note, axis=study.axis, values=study.values,
                       lr_exponents=study.lr_exponents, setting=study.setting,
                       ablation=study.ablation, config=config, corpus_hash="", cells=(),
                       updated="")


def result_from_storage(study: Study, storage: Any) -> StudyResult:
    """The study's cells as recorded in ``storage`` so far (points not started have none),
    with the configs stored beside them: reading needs no corpus."""
    from hptransfer.study.ledger import load_config, load_trials, study_names

    present = study_names(storage)
    cells: list[Cell] = []
    configs: list[StudyConfig] = []
    for point in study.points:
        if point.width not in present.get(point.study, ()):
            continue
        config = load_config(point.study, storage)
        configs.append(config)
        latest: dict[int, TrialRecord] = {}
        for trial in load_trials(point.study, storage, [point.width]):
            if trial.status in _FINISHED and trial.hparams is not None:
                latest[round(math.log2(trial.hparams.lr))] = trial  # the last one wins
        tokens = config.tokens_per_trial()
        steps = tokens // (config.space.base.batch_size * config.spec.seq_len)
        cells += [Cell(width=point.width, depth=config.spec.depth, steps=steps, tokens=tokens,
                       lr_exponent=e, lr=t.hparams.lr, status=t.status,
                       val_loss=t.final_val_loss, flops=t.flops,
                       wall_time_s=round(t.wall_time_s, 2)) for e, t in sorted(latest.items())]
    if not configs:
        return empty_result(study)
    return empty_result(study).model_copy(update={
        "config": configs[0], "corpus_hash": configs[0].corpus_hash, "cells": tuple(cells),
        "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})


def run_study(study: Study, *, results: str | Path, storage: str | None = None,
              corpus: Corpus | None = None, threads: int | None = None,
              on_trial: Callable[[TrialRecord], None] | None = None) -> StudyResult:
    """Train every missing cell of ``study``, point by point, and record it.

    ``results`` is the folder of ``<name>.json``, rewritten after each point. ``storage``
    is an Optuna storage URL (None: ``$HPTRANSFER_HOME/studies.db``). Resumable: finished
    cells are never trained again, lost ones are retried (:func:`hptransfer.study.tune.tune`).
    """
    from hptransfer.data.corpus import load_corpus
    from hptransfer.study.storage import normalize, open_storage
    from hptransfer.study.tune import SamplerKind, WarmStart, tune

    corpus = corpus if corpus is not None else load_corpus(study.setting.data)
    configs = [p.config(corpus) for p in study.points]  # every point valid before any runs
    url = normalize(storage)
    path = Path(results) / f"{study.name}.json"
    result = None
    for point, config in zip(study.points, configs, strict=True):
        tune(config, study=point.study, widths=(point.width,), trials=len(study.lr_exponents),
             storage=url, sampler=SamplerKind.GRID, warm_start=WarmStart.NONE,
             corpus=corpus, threads=threads, on_trial=on_trial)
        result = result_from_storage(study, open_storage(url))
        write_atomic(path, result.model_dump_json(indent=1) + "\n")
    return result


def load_result(path: str | Path) -> StudyResult:
    return StudyResult.model_validate_json(Path(path).read_text())


# ---- the table --------------------------------------------------------------------------------

class Row(FrozenConfig):
    """One axis value: its loss per LR exponent, the argmin and the fitted optimum."""

    value: int
    cells: dict[int, Cell]
    argmin: int | None = Field(description="log2 α of the lowest completed loss")
    coarse_argmin: int | None = Field(None, description="the argmin among every other LR of "
                                                         "the grid from its lowest (the "
                                                         "paper's 2-octave spacing)")
    optimum: float | None = Field(None, description="log2 α at the fitted bowl's vertex")
    optimum_interval: tuple[float, float] | None = None
    flags: tuple[str, ...] = ()


class StudyTable(FrozenConfig):
    """What a study shows: the rows, the paper's verdict rule and our fitted drift."""

    result: StudyResult
    rows: tuple[Row, ...]
    transfer: bool | None = Field(description="same argmin at every value; None until "
                                              "every cell has run and every value has a "
                                              "completed one")
    coarse_transfer: bool | None = Field(None, description="the same rule on every other LR "
                                                           "of the grid (the paper's grid "
                                                           "was 2 octaves apart, ours 1)")
    drift: float | None = Field(None, description="octaves the LR optimum moves per "
                                                  "doubling of the axis")
    drift_interval: tuple[float, float] | None = None

    @property
    def cells_done(self) -> int:
        return sum(len(r.cells) for r in self.rows)

    @property
    def verdict(self) -> str:
        """Ours: "Yes" / "No" once every cell has run, else "not yet run", "partial" or
        "undecided" (every run of some value diverged)."""
        if self.transfer is not None:
            return "Yes" if self.transfer else "No"
        if not self.cells_done:
            return "not yet run"
        if self.cells_done < self.result.planned:
            return f"partial ({self.cells_done}/{self.result.planned} cells)"
        return f"undecided: a {self.result.axis.value} has no completed run"


def _records(result: StudyResult, value: int) -> list[TrialRecord]:
    """A value's cells as the trial records the predictor's fits read."""
    base = result.config.space.base
    return [TrialRecord(study=result.name, number=i, width=value, status=c.status,
                        hparams=base.model_copy(update={"lr": c.lr}), final_val_loss=c.val_loss,
                        flops=c.flops, wall_time_s=c.wall_time_s)
            for i, c in enumerate(result.cells) if c.value(result.axis) == value]


def _argmin(losses: dict[int, float]) -> int | None:
    return min(losses, key=losses.get) if losses else None


def _same(complete: bool, argmins: list[int | None]) -> bool | None:
    """The paper's rule: one argmin at every value; None until every cell has run."""
    return len(set(argmins)) == 1 if complete and None not in argmins else None


def tabulate(result: StudyResult, *, seed: int = 0) -> StudyTable:
    """The paper-style table of ``result``, with the fitted optima and drift."""
    from hptransfer.transfer.fit import _transfer_fits
    from hptransfer.transfer.optimum import BAND, WINDOW_OCTAVES, _fit_width
    from hptransfer.transfer.predictor import MIN_COMPLETE

    rng = np.random.default_rng(seed)
    rows, fits = [], []
    for value in result.values:
        cells = {c.lr_exponent: c for c in result.cells if c.value(result.axis) == value}
        done = {e: c.val_loss for e, c in cells.items() if c.status is TrialStatus.COMPLETE
                and c.val_loss is not None and math.isfinite(c.val_loss)}
        # the paper's grid points were 2 octaves apart: its yes/no rule on our 1-octave grid
        # is stricter than the paper's own, so the rule is also applied at its spacing
        coarse = {e: loss for e, loss in done.items() if (e - result.lr_exponents[0]) % 2 == 0}
        row = Row(value=value, cells=cells, argmin=_argmin(done), coarse_argmin=_argmin(coarse))
        if len(done) >= MIN_COMPLETE:
            # the axis value stands in for the width: the fits only read it as x = log2 value
            fit = _fit_width(value, _records(result, value), result.config, band=BAND,
                             window=WINDOW_OCTAVES, bootstrap=BOOTSTRAP, rng=rng)
            estimate = fit.evidence.optima["lr"]
            row = row.model_copy(update={
                "optimum": math.log2(estimate.value),
                "optimum_interval": tuple(math.log2(v) for v in estimate.interval),
                "flags": tuple(f for f in fit.evidence.flags if not f.startswith("note:"))})
            fits.append(fit)
        rows.append(row)
    complete = sum(len(r.cells) for r in rows) == result.planned
    transfer = _same(complete, [r.argmin for r in rows])
    coarse_transfer = _same(complete, [r.coarse_argmin for r in rows])
    drift = interval = None
    if len(fits) >= 2:
        lr_fit = _transfer_fits(fits, result.config, max(result.values))[0]["lr"]
        drift, interval = lr_fit.slope, lr_fit.slope_interval
    return StudyTable(result=result, rows=tuple(rows), transfer=transfer,
                      coarse_transfer=coarse_transfer, drift=drift, drift_interval=interval)


def write_plot(table: StudyTable, out: str | Path) -> Path:
    """``<out>/<name>_transfer.png``: validation loss vs LR, one curve per axis value."""
    import matplotlib.pyplot as plt

    from hptransfer.report.plots import transfer_figure

    result = table.result
    records = [r for row in table.rows for r in _records(result, row.value)]
    fig = transfer_figure(result.name, records)
    legend = fig.axes[0].get_legend()
    if legend is not None and result.axis is not Axis.WIDTH:  # the figure names widths
        for text in legend.get_texts():
            text.set_text(text.get_text().replace("width", result.axis.value))
    path = Path(out) / f"{result.name}_transfer.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path

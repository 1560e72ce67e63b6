"""Running a reproduction study, and its recorded result.

:func:`run_study` tunes every point of a :class:`~hptransfer.reproduction.ablation.Study`
with the grid sampler (each LR octave once, at every axis value) through
:func:`hptransfer.study.tune.tune`, so the Optuna storage is the record, as for any tune,
and a rerun only trains what is missing. After each point it rewrites the study's
:class:`StudyResult`, a small JSON file (``studies/results/<name>.json``, committed) of every
cell's loss and cost, so the table (:mod:`hptransfer.reproduction.table`) rebuilds without
the database.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.report.files import write_atomic
from hptransfer.reproduction.ablation import Ablation, Axis, PaperVerdict, Setting, Study
from hptransfer.spec import FrozenConfig
from hptransfer.study.config import StudyConfig
from hptransfer.study.schema import TrialRecord, TrialStatus

if TYPE_CHECKING:
    from hptransfer.data.corpus import Corpus

__all__ = ["Cell", "StudyResult", "cell_records", "empty_result", "load_result",
           "result_from_storage", "run_study"]


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
    from hptransfer.study.attributes import load_config, study_names
    from hptransfer.study.records import load_trials

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
            if trial.finished and trial.hparams is not None:
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
    from hptransfer.study.search import SamplerKind, WarmStart
    from hptransfer.study.storage import Access, normalize, open_storage
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    corpus = corpus if corpus is not None else load_corpus(study.setting.source)
    configs = [p.config(corpus) for p in study.points]  # every point valid before any runs
    url = normalize(storage)
    path = Path(results) / f"{study.name}.json"
    result = None
    for point, config in zip(study.points, configs, strict=True):
        tune(config, study=point.study, widths=(point.width,), trials=len(study.lr_exponents),
             storage=url, sampler=SamplerKind.GRID, warm_start=WarmStart.NONE,
             corpus=corpus, runner=LocalRunner(threads=threads), on_trial=on_trial)
        result = result_from_storage(study, open_storage(url, Access.READ))
        write_atomic(path, result.model_dump_json(indent=1) + "\n")
    return result


def load_result(path: str | Path) -> StudyResult:
    return StudyResult.model_validate_json(Path(path).read_text())


def cell_records(result: StudyResult, value: int) -> list[TrialRecord]:
    """A value's cells as the trial records the predictor's fits (and the plots) read."""
    base = result.config.space.base
    return [TrialRecord(study=result.name, number=i, width=value, status=c.status,
                        hparams=base.model_copy(update={"lr": c.lr}), final_val_loss=c.val_loss,
                        flops=c.flops, wall_time_s=c.wall_time_s)
            for i, c in enumerate(result.cells) if c.value(result.axis) == value]

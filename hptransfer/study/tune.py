"""The tune: every width of a study in order, each until it holds enough finished trials.

:func:`tune` checks everything before any trial runs (config against the stored one,
corpus, sampler limits, the runner's own preconditions), enqueues each width's warm start,
and hands the width to a :class:`TrialRunner`: :class:`~hptransfer.study.worker.LocalRunner`
(this machine, the default) or a backend's (:class:`hptransfer.backends.ray_tune.RayTune`).
Re-running the same call resumes: finished trials are kept, lost ones retried, and only the
missing trials run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from hptransfer.errors import StudyError
from hptransfer.spec import FrozenConfig
from hptransfer.study.config import DEFAULT_TRIALS, StudyConfig, study_config
from hptransfer.study.ledger import (
    TrialRecord,
    WidthSummary,
    check_existing,
    check_name,
    load_trials,
    summarize,
)
from hptransfer.study.search import (
    Pruning,
    SamplerKind,
    WarmStart,
    enqueue_warm_start,
    grid_size,
    open_width_study,
    quiet_optuna,
)

if TYPE_CHECKING:
    import optuna

    from hptransfer.data.corpus import Corpus

__all__ = ["TrialRunner", "TuneResult", "WidthJob", "tune"]


@dataclass(frozen=True)
class WidthJob:
    """One width of a tune, as a runner gets it: run trials of ``study`` until it holds
    ``trials`` finished ones."""

    study: optuna.Study  # the width's Optuna study, created and warm-started
    name: str  # the hptransfer study
    width: int
    config: StudyConfig
    storage_url: str
    trials: int
    sampler: SamplerKind
    pruning: Pruning
    corpus: Corpus
    on_trial: Callable[[TrialRecord], None] | None


class TrialRunner(Protocol):
    """Where a tune's trials run. ``prepare`` refuses, before anything is created, what
    this runner cannot do; ``run_width`` runs one width's trials."""

    def prepare(self, storage_url: str, pruning: Pruning) -> None: ...

    def run_width(self, job: WidthJob) -> None: ...


class TuneResult(FrozenConfig):
    """What ``tune`` leaves behind: where the record is, and each width's summary."""

    study: str
    storage: str
    widths: tuple[WidthSummary, ...]
    wall_time_s: float

    def best(self, width: int) -> WidthSummary:
        for summary in self.widths:
            if summary.width == width:
                return summary
        raise KeyError(f"width {width} is not in study {self.study!r}")


def tune(config: StudyConfig | None = None, *, study: str = "proxy",
         widths: tuple[int, ...] = (128,), trials: int = DEFAULT_TRIALS,
         storage: str | None = None, sampler: SamplerKind = SamplerKind.TPE,
         pruning: Pruning = Pruning.NONE, warm_start: WarmStart = WarmStart.OCTAVES,
         corpus: Corpus | None = None, runner: TrialRunner | None = None,
         on_trial: Callable[[TrialRecord], None] | None = None) -> TuneResult:
    """Tune every width of ``widths`` (in order) until each holds ``trials`` finished trials.

    ``config`` defaults to :func:`~hptransfer.study.config.study_config` (the built-in proxy
    setting and corpus). ``runner`` defaults to one local process
    (:class:`~hptransfer.study.worker.LocalRunner`); ``on_trial`` gets each trial's record
    as it finishes.
    """
    from hptransfer.data.corpus import check_hash, load_corpus
    from hptransfer.study.storage import normalize, open_storage
    from hptransfer.study.worker import LocalRunner

    quiet_optuna()
    check_name(study)
    started = time.perf_counter()
    url = normalize(storage)
    runner = runner or LocalRunner()
    if config is None:
        config = study_config(corpus=corpus)
    corpus = corpus if corpus is not None else load_corpus(config.data)
    check_hash(corpus, config.corpus_hash)
    if sampler is SamplerKind.GRID and trials > grid_size(config):
        raise StudyError(f"--sampler grid has {grid_size(config)} points (LR octaves × batch "
                         f"sizes); ask for at most that many --trials or widen --lr-range")
    runner.prepare(url, pruning)  # e.g. the Ray install line, not a half-made study
    optuna_storage = open_storage(url)
    check_existing(study, config, optuna_storage)
    previous: list[TrialRecord] = []
    for width in widths:
        width_study = open_width_study(study, width, config, optuna_storage, sampler=sampler,
                                       pruning=pruning)
        enqueue_warm_start(width_study, config, warm_start, previous)
        runner.run_width(WidthJob(study=width_study, name=study, width=width, config=config,
                                  storage_url=url, trials=trials, sampler=sampler,
                                  pruning=pruning, corpus=corpus, on_trial=on_trial))
        previous = load_trials(study, optuna_storage, [width])
    summaries = summarize(load_trials(study, optuna_storage, list(widths)))
    return TuneResult(study=study, storage=url, widths=tuple(summaries),
                      wall_time_s=time.perf_counter() - started)

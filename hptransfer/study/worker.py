"""The worker: trials of one width, one after another, until the study holds enough.

ask → :meth:`SearchSpace.suggest` → :func:`hptransfer.train.loop.train` → tell, under a
lease (:mod:`hptransfer.study.leases`), recorded by the ledger. The storage is the only
shared state, so workers may be processes on one machine (:class:`LocalRunner`, ``tune
--workers N``) or on many (``hptransfer worker``), each counting what the others run.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hptransfer.errors import StudyError
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord, Verdict
from hptransfer.spec import ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.leases import Heartbeat, reclaim_lost
from hptransfer.study.ledger import (
    TrialRecord,
    finish_trial,
    finished_count,
    running_count,
    write_inputs,
)
from hptransfer.study.search import Pruning, SamplerKind, open_width_study, quiet_optuna
from hptransfer.study.storage import storage_kind

if TYPE_CHECKING:
    import optuna

    from hptransfer.data.corpus import Corpus
    from hptransfer.study.tune import WidthJob

__all__ = ["LocalRunner", "record_run", "run_worker", "work"]


def record_run(study: optuna.Study, trial: optuna.Trial, *, spec: ModelSpec,
               hparams: HParams, config: StudyConfig, corpus: Corpus, threads: int,
               attrs: tuple[tuple[str, Any], ...] = (), prune: bool = False,
               trainer: Callable[[], RunRecord] | None = None) -> TrialRecord:
    """Train ``spec``/``hparams`` as ``trial`` of ``study`` under a lease and record it.

    The one place a run becomes a trial (tune trials and confirmation runs alike). The
    training is :func:`hptransfer.train.loop.train` in this process, or ``trainer`` when
    the run is trained elsewhere (a Ray Train job: this process holds the lease while it
    runs). An exception is recorded as the trial's error, never raised: it would only fail
    again on a retry.
    """
    from hptransfer.train.loop import train

    storage = study._storage
    beat = Heartbeat(storage, trial._trial_id)
    try:
        write_inputs(storage, trial._trial_id, spec=spec, hparams=hparams,
                     corpus_hash=corpus.content_hash, threads=threads, attrs=attrs)

        def on_eval(point: CurvePoint) -> Verdict:
            trial.report(point.loss, point.tokens)
            return Verdict.STOP if trial.should_prune() else Verdict.CONTINUE

        try:
            outcome = trainer() if trainer is not None else train(
                spec, hparams, config.budget, corpus, seed=config.seed,
                on_eval=on_eval if prune else None, threads=threads)
        except Exception as error:
            outcome = error
        return finish_trial(study, trial, outcome)
    finally:
        beat.stop()


def work(study: optuna.Study, width: int, config: StudyConfig, corpus: Corpus, *,
         trials: int, threads: int,
         on_trial: Callable[[TrialRecord], None] | None = None) -> None:
    """Run trials of ``study`` (one width) until it holds ``trials`` finished ones."""
    while True:
        reclaim_lost(study)
        # count trials other workers are running too, so parallel workers do not overshoot
        if finished_count(study) + running_count(study) >= trials:
            break
        trial = study.ask()
        record = record_run(study, trial, spec=config.spec_at(width),
                            hparams=config.space.suggest(trial), config=config,
                            corpus=corpus, threads=threads, prune=True)
        if on_trial is not None:
            on_trial(record)


def run_worker(name: str, width: int, config: StudyConfig, storage, corpus: Corpus, *,
               trials: int, sampler: SamplerKind = SamplerKind.TPE,
               pruning: Pruning = Pruning.NONE, threads: int = 1,
               on_trial: Callable[[TrialRecord], None] | None = None) -> None:
    """Join study ``name`` at ``width``: run its trials until it holds ``trials`` finished
    ones (``hptransfer worker``)."""
    quiet_optuna()
    study = open_width_study(name, width, config, storage, sampler=sampler, pruning=pruning)
    work(study, width, config, corpus, trials=trials, threads=threads, on_trial=on_trial)


def _spawn_worker(job: WidthJob, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "hptransfer.cli", "worker", "--study", job.name,
               "--storage", job.storage_url, "--width", str(job.width), "--trials",
               str(job.trials), "--threads", str(threads), "--sampler", job.sampler.value,
               "--pruner", job.pruning.value, "--quiet"]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


class LocalRunner:
    """Trials on this machine: this process plus ``workers - 1`` worker processes, each
    with ``threads`` torch threads (default: the available CPUs / workers)."""

    def __init__(self, workers: int = 1, threads: int | None = None) -> None:
        if workers < 1:
            raise StudyError(f"workers must be at least 1, got {workers}")
        self.workers, self._threads = workers, threads

    @property
    def threads(self) -> int:
        from hptransfer.train.device import resolve_threads

        return self._threads or max(1, resolve_threads() // self.workers)

    def prepare(self, storage_url: str, pruning: Pruning) -> None:
        if self.workers > 1 and storage_kind(storage_url) == "sqlite" and ":memory:" in \
                storage_url:
            raise StudyError("an in-memory SQLite storage cannot be shared by workers")

    def run_width(self, job: WidthJob) -> None:
        threads = self.threads
        children = [_spawn_worker(job, threads) for _ in range(self.workers - 1)]
        try:
            work(job.study, job.width, job.config, job.corpus, trials=job.trials,
                 threads=threads, on_trial=job.on_trial)
        finally:
            for child in children:
                child.wait()
        failed = [c.returncode for c in children if c.returncode]
        if failed:
            raise StudyError(f"{len(failed)} worker process(es) exited with {failed}; the "
                             f"study is intact: run the same command again to continue")

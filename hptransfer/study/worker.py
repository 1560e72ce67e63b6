"""The worker: trials of one width, one after another, until the study holds enough.

ask → :meth:`SearchSpace.suggest` → :func:`hptransfer.training.loop.train` → tell, under a
lease (:mod:`hptransfer.study.leases`), recorded by the ledger. The storage is the only
shared state, so workers may be processes on one machine (:class:`LocalRunner`, ``tune
--workers N``) or on many (``hptransfer worker``), each counting what the others run.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.errors import StudyError
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord, Verdict
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.leases import GRACE_S, Heartbeat, PlannerLease, planner_alive, reclaim_lost
from hptransfer.study.ledger import (
    Attr,
    TrialRecord,
    claim_waiting,
    enqueue,
    finish_trial,
    finished_count,
    ladder_done,
    mark_ladder_done,
    running_count,
    trial_record,
    trial_seed,
    write_inputs,
    write_placement,
)
from hptransfer.study.search import Pruning, SamplerKind, open_width_study, quiet_optuna
from hptransfer.study.storage import storage_kind

if TYPE_CHECKING:
    import optuna

    from hptransfer.data.corpus import Corpus
    from hptransfer.study.ladder import Ladder
    from hptransfer.study.tune import WidthJob
    from hptransfer.training.execution import Execution
    from hptransfer.training.loop import EvalCallback

__all__ = ["AUTO", "POLL_S", "LocalRunner", "Placement", "auto_placement", "record_run",
           "run_worker", "work", "work_ladder"]

POLL_S = 0.5  # how often a ladder worker looks for the next round while one is in flight


def record_run(study: optuna.Study, trial: optuna.Trial, *, spec: ModelSpec,
               hparams: HParams, config: StudyConfig, corpus: Corpus, threads: int,
               attrs: tuple[tuple[str, Any], ...] = (), prune: bool = False,
               device: str | None = None, execution: Execution | None = None,
               trainer: Callable[[EvalCallback], RunRecord] | None = None) -> TrialRecord:
    """Train ``spec``/``hparams`` as ``trial`` of ``study`` under a lease and record it.

    The one place a run becomes a trial (tune trials and confirmation runs alike). The
    training is :func:`hptransfer.training.loop.train` in this process (on ``device``, with
    ``execution``), or ``trainer(on_eval)`` when the run is trained elsewhere (a Ray Train or
    torchrun job: this process holds the lease while it runs). Every validation point is
    reported to the trial as it comes (live progress for ``hptransfer status`` and
    optuna-dashboard); with ``prune`` the study's pruner may stop the run there. An exception
    is recorded as the trial's error, never raised: it would only fail again on a retry.
    """
    from hptransfer.training.loop import train

    storage = study._storage
    beat = Heartbeat(storage, trial._trial_id)
    seed = trial_seed(trial.user_attrs, config)
    try:
        write_inputs(storage, trial._trial_id, spec=spec, hparams=hparams,
                     corpus_hash=corpus.content_hash, threads=threads, seed=seed, attrs=attrs)

        def on_eval(point: CurvePoint) -> Verdict:
            trial.report(point.loss, point.tokens)
            return Verdict.STOP if prune and trial.should_prune() else Verdict.CONTINUE

        try:
            outcome = trainer(on_eval) if trainer is not None else train(
                spec, hparams, config.budget, corpus, seed=seed, on_eval=on_eval,
                threads=threads, device=device, execution=execution)
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


def work_ladder(study: optuna.Study, width: int, config: StudyConfig, corpus: Corpus, *,
                threads: int, planner: Ladder | None,
                on_trial: Callable[[TrialRecord], None] | None = None) -> None:
    """Run the ladder search's trials of one width (:mod:`hptransfer.study.ladder`).

    Every worker runs the trials that are waiting. When none is waiting and none running,
    the *planner* (the process given ``planner``: the tune) plans the next round and
    enqueues it, or marks the width done; a *follower* (``planner`` None: a worker process)
    waits for the round, and stops when the width is done or its planner is gone.
    """
    lease = PlannerLease(study) if planner is not None else None
    started = time.monotonic()
    try:
        while True:
            reclaim_lost(study)
            trial = claim_waiting(study)
            if trial is not None:
                record = record_run(study, trial, spec=config.spec_at(width),
                                    hparams=config.space.suggest(trial), config=config,
                                    corpus=corpus, threads=threads)
                if on_trial is not None:
                    on_trial(record)
                continue
            if planner is None:
                if ladder_done(study) is not None:
                    return
                alive = planner_alive(study)
                if alive is False or (alive is None and time.monotonic() - started > GRACE_S):
                    raise StudyError(
                        f"{study.study_name} is searched by the ladder, whose rounds the "
                        f"hptransfer tune of the study plans, and no tune is planning it now: "
                        f"run that tune command (again); workers then share its rounds")
                time.sleep(POLL_S)
                continue
            if running_count(study):
                time.sleep(POLL_S)
                continue
            rows = [trial_record(study.study_name, t) for t in study.get_trials(deepcopy=False)]
            plan = planner.plan(rows)
            if plan.done is not None:
                mark_ladder_done(study, plan.done)
                return
            for point in plan.points:
                enqueue(study, point.params(config),
                        **{Attr.SEED: point.seed, Attr.LADDER: point.step.value})
    finally:
        if lease is not None:
            lease.stop()


def run_worker(name: str, width: int, config: StudyConfig, storage, corpus: Corpus, *,
               trials: int, sampler: SamplerKind = SamplerKind.TPE,
               pruning: Pruning = Pruning.NONE, threads: int = 1,
               on_trial: Callable[[TrialRecord], None] | None = None) -> None:
    """Join study ``name`` at ``width``: run its trials until it holds ``trials`` finished
    ones (``hptransfer worker``)."""
    quiet_optuna()
    study = open_width_study(name, width, config, storage, sampler=sampler, pruning=pruning)
    if sampler is SamplerKind.LADDER:  # the tune plans the rounds; this worker follows
        work_ladder(study, width, config, corpus, threads=threads, planner=None,
                    on_trial=on_trial)
        return
    work(study, width, config, corpus, trials=trials, threads=threads, on_trial=on_trial)


def _in_memory(storage_url: str) -> bool:
    return storage_kind(storage_url) == "sqlite" and ":memory:" in storage_url


def _spawn_worker(job: WidthJob, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "hptransfer.cli", "worker", "--study", job.name,
               "--storage", job.storage_url, "--width", str(job.width), "--trials",
               str(job.trials), "--threads", str(threads), "--sampler", job.sampler.value,
               "--pruner", job.pruning.value, "--quiet"]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


AUTO = "auto"
# ``workers="auto"``: at proxy widths a trial's matmuls are too small to keep several threads
# busy, so trials side by side with one thread each do more per hour than one trial with all
# of them (measured on 2 cores: 1.8× at width 64, 1.3× at width 128; docs/tuning.md). Up to
# this width each trial gets 1 thread (or --threads), and as many run at once as the CPUs
# allow, at most AUTO_MAX_WORKERS (a ladder round holds 2 to 5 trials); wider, one process.
AUTO_MAX_WIDTH = 256
AUTO_MAX_WORKERS = 4


class Placement(FrozenConfig):
    """How one width's trials share this machine: processes × torch threads per trial."""

    workers: int
    threads: int
    auto: bool = Field(description="chosen by workers='auto' from the width and the CPUs")

    def describe(self) -> str:
        how = "auto" if self.auto else "as asked"
        return (f"{self.workers} worker{'s' if self.workers > 1 else ''} × {self.threads} "
                f"thread{'s' if self.threads > 1 else ''} per trial ({how})")


def auto_placement(width: int, cpus: int, threads: int | None = None) -> Placement:
    """``workers="auto"``: the placement of trials of ``width`` on ``cpus`` CPUs (see
    ``AUTO_MAX_WIDTH``); ``threads`` fixes the threads per trial."""
    if width > AUTO_MAX_WIDTH:
        return Placement(workers=1, threads=threads or cpus, auto=True)
    per_trial = threads or 1
    return Placement(workers=max(1, min(AUTO_MAX_WORKERS, cpus // per_trial)),
                     threads=per_trial, auto=True)


class LocalRunner:
    """Trials on this machine: this process plus ``workers - 1`` worker processes, each
    with ``threads`` torch threads (default: the available CPUs / workers).
    ``workers="auto"`` (the default) picks both per width (:func:`auto_placement`)."""

    def __init__(self, workers: int | str = AUTO, threads: int | None = None) -> None:
        if workers != AUTO and (not isinstance(workers, int) or workers < 1):
            raise StudyError(f"workers must be a positive number or 'auto', got {workers!r}")
        if threads is not None and threads < 1:
            raise StudyError(f"threads must be at least 1, got {threads}")
        self.workers, self._threads = workers, threads

    def placement(self, width: int) -> Placement:
        """The workers and threads per trial this runner uses at ``width``."""
        from hptransfer.training.device import resolve_threads

        if self.workers == AUTO:
            return auto_placement(width, resolve_threads(), self._threads)
        return Placement(workers=self.workers, threads=self._threads or max(
            1, resolve_threads() // self.workers), auto=False)

    def prepare(self, storage_url: str, pruning: Pruning, sampler: SamplerKind) -> None:
        if _in_memory(storage_url) and self.workers != AUTO and self.workers > 1:
            raise StudyError("an in-memory SQLite storage cannot be shared by workers: give "
                             "a file (--storage study.db), or workers=1")

    def run_width(self, job: WidthJob) -> None:
        placement = self.placement(job.width)
        if _in_memory(job.storage_url):  # no other process can reach it
            placement = placement.model_copy(update={"workers": 1})
        threads = placement.threads
        write_placement(job.study, placement.model_dump())
        if job.ladder is not None:
            mark_ladder_done(job.study, None)  # before any follower could read an old one
        children = [_spawn_worker(job, threads) for _ in range(placement.workers - 1)]
        try:
            if job.ladder is not None:
                work_ladder(job.study, job.width, job.config, job.corpus, threads=threads,
                            planner=job.ladder, on_trial=job.on_trial)
            else:
                work(job.study, job.width, job.config, job.corpus, trials=job.trials,
                     threads=threads, on_trial=job.on_trial)
        finally:
            for child in children:
                child.wait()
        failed = [c.returncode for c in children if c.returncode]
        if failed:
            raise StudyError(f"{len(failed)} worker process(es) exited with {failed}; the "
                             f"study is intact: run the same command again to continue")

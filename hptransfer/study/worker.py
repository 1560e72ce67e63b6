"""The worker: trials of one width, one after another, until the study holds enough.

claim → :meth:`SearchSpace.suggest` → :func:`hptransfer.study.trial.record_run` (train under
a lease, record), for an Optuna sampler (:func:`work`) or the ladder search
(:func:`work_ladder`). The storage is the only shared state, so workers may be processes on
one machine (:class:`LocalRunner`, ``tune --workers N``) or on many (``hptransfer worker``),
each counting what the others run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

from hptransfer.errors import StudyError
from hptransfer.study.attributes import ladder_done, mark_ladder_done, write_placement
from hptransfer.study.config import StudyConfig
from hptransfer.study.leases import LeaseWarning, PlannerLease, lease_timing, planner_alive
from hptransfer.study.lifecycle import claim_next, claim_waiting, enqueue, reclaim_lost
from hptransfer.study.records import finished_count, records_of, running_count
from hptransfer.study.runner import AUTO, Placement, WidthJob, auto_placement
from hptransfer.study.schema import Attr, TrialRecord
from hptransfer.study.search import Pruning, SamplerKind, open_width_study, quiet_optuna
from hptransfer.study.storage import storage_kind
from hptransfer.study.trial import record_run
from hptransfer.tracking import Tracking
from hptransfer.tracking.tracker import ENV

if TYPE_CHECKING:
    import optuna

    from hptransfer.data.corpus import Corpus
    from hptransfer.study.ladder import Ladder

__all__ = ["LocalRunner", "run_worker", "work", "work_ladder"]

POLL_S = 0.5  # how often a ladder worker looks for the next round while one is in flight
STOP_CHILDREN_S = 20.0  # how long Ctrl-C waits for worker processes to hand their trials back


def work(study: optuna.Study, width: int, config: StudyConfig, corpus: Corpus, *,
         trials: int, threads: int,
         on_trial: Callable[[TrialRecord], None] | None = None,
         tracking: Tracking | None = None) -> None:
    """Run trials of ``study`` (one width) until it holds ``trials`` finished ones, each
    logged to ``tracking``'s trackers."""
    timing = lease_timing()
    while True:
        reclaim_lost(study, timing)
        # count trials other workers are running too, so parallel workers do not overshoot
        if finished_count(study) + running_count(study) >= trials:
            break
        trial = claim_next(study)
        record = record_run(study, trial, spec=config.spec_at(width),
                            hparams=config.space.suggest(trial), config=config,
                            corpus=corpus, threads=threads, prune=True, tracking=tracking)
        if record is not None and on_trial is not None:
            on_trial(record)


def work_ladder(study: optuna.Study, width: int, config: StudyConfig, corpus: Corpus, *,
                threads: int, planner: Ladder | None,
                on_trial: Callable[[TrialRecord], None] | None = None,
                tracking: Tracking | None = None) -> None:
    """Run the ladder search's trials of one width (:mod:`hptransfer.study.ladder`).

    Every worker runs the trials that are waiting. When none is waiting and none running,
    the *planner* (the process given ``planner``: the tune, which holds the width's
    :class:`~hptransfer.study.leases.PlannerLease` meanwhile) plans the next round and
    enqueues it, or marks the width done. A *follower* (``planner`` None: a worker process)
    waits for the round while the planner's process lives, however late the round is; it
    stops when the width is done, or, with one line saying so, when the planner is gone.
    """
    timing = lease_timing()
    started = time.monotonic()
    while True:
        reclaim_lost(study, timing)
        trial = claim_waiting(study)
        if trial is not None:
            record = record_run(study, trial, spec=config.spec_at(width),
                                hparams=config.space.suggest(trial), config=config,
                                corpus=corpus, threads=threads, tracking=tracking)
            if record is not None and on_trial is not None:
                on_trial(record)
            continue
        if planner is None:
            if ladder_done(study) is not None:
                return
            alive = planner_alive(study, timing.grace_s)
            if alive is False:
                warnings.warn(f"{study.study_name}: the hptransfer tune that plans its ladder "
                              f"rounds has stopped, so this worker stops too; the trials it "
                              f"ran are recorded. Run the tune again to continue (workers "
                              f"then share its rounds)", LeaseWarning, stacklevel=2)
                return
            if alive is None and time.monotonic() - started > timing.grace_s:
                raise StudyError(
                    f"{study.study_name} is searched by the ladder, whose rounds the "
                    f"hptransfer tune of the study plans, and no tune has planned it in "
                    f"{timing.grace_s:g} s: run that tune command; workers then share its "
                    f"rounds")
            time.sleep(POLL_S)
            continue
        if running_count(study):
            time.sleep(POLL_S)
            continue
        plan = planner.plan(records_of(study))
        if plan.done is not None:
            mark_ladder_done(study, plan.done)
            return
        for point in plan.points:
            enqueue(study, point.params(config),
                    **{Attr.SEED: point.seed, Attr.LADDER: point.step.value})


def run_worker(name: str, width: int, config: StudyConfig, storage, corpus: Corpus, *,
               trials: int, sampler: SamplerKind = SamplerKind.TPE,
               pruning: Pruning = Pruning.NONE, threads: int = 1,
               on_trial: Callable[[TrialRecord], None] | None = None,
               tracking: Tracking | None = None) -> None:
    """Join study ``name`` at ``width``: run its trials until it holds ``trials`` finished
    ones (``hptransfer worker``), each logged to ``tracking``'s trackers."""
    quiet_optuna()
    study = open_width_study(name, width, config, storage, sampler=sampler, pruning=pruning)
    if sampler is SamplerKind.LADDER:  # the tune plans the rounds; this worker follows
        work_ladder(study, width, config, corpus, threads=threads, planner=None,
                    on_trial=on_trial, tracking=tracking)
        return
    work(study, width, config, corpus, trials=trials, threads=threads, on_trial=on_trial,
         tracking=tracking)


def _in_memory(storage_url: str) -> bool:
    return storage_kind(storage_url) == "sqlite" and ":memory:" in storage_url


def _spawn_worker(job: WidthJob, threads: int) -> subprocess.Popen:
    command = [sys.executable, "-m", "hptransfer.cli", "worker", "--study", job.name,
               "--storage", job.storage_url, "--width", str(job.width), "--trials",
               str(job.trials), "--threads", str(threads), "--sampler", job.sampler.value,
               "--pruner", job.pruning.value, "--quiet"]
    env = None
    if job.tracking is not None:  # the trackers the tune found working, no other: through
        # the variable, so that an empty list is not read as "not given" (and the default)
        env = {**os.environ, ENV: ",".join(kind.value for kind in job.tracking.trackers)}
        command += ["--tracker-dir", str(job.tracking.place())]
    # a session of its own: Ctrl-C reaches it once, forwarded by this process (_interrupt),
    # not twice (the terminal signals its whole foreground process group)
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                            env=env)


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
        lease = None
        if job.ladder is not None:
            mark_ladder_done(job.study, None)  # before any follower could read an old one
            # before the followers start, so that none reads the lease of an earlier tune
            lease = PlannerLease(job.study)
        children = []
        try:
            children = [_spawn_worker(job, threads) for _ in range(placement.workers - 1)]
            if job.ladder is not None:
                work_ladder(job.study, job.width, job.config, job.corpus, threads=threads,
                            planner=job.ladder, on_trial=job.on_trial, tracking=job.tracking)
            else:
                work(job.study, job.width, job.config, job.corpus, trials=job.trials,
                     threads=threads, on_trial=job.on_trial, tracking=job.tracking)
        except KeyboardInterrupt:
            _interrupt(children)
            raise
        finally:
            if lease is not None:  # first: a follower waits for rounds while it is held
                lease.stop()
            for child in children:
                child.wait()
        failed = [c.returncode for c in children if c.returncode]
        if failed:
            raise StudyError(f"{len(failed)} worker process(es) exited with {failed}; the "
                             f"study is intact: run the same command again to continue")


def _interrupt(children: list[subprocess.Popen]) -> None:
    """Ctrl-C: each worker process hands its trial back (exit 130); one that has not within
    ``STOP_CHILDREN_S`` is killed (its trial is then retried as its process is gone)."""
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGINT)
    deadline = time.monotonic() + STOP_CHILDREN_S
    for child in children:
        try:
            child.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()

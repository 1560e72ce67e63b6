"""The trial lifecycle: enqueue, claim, hold, finish — or take over a trial whose holder
is gone, and retry it.

A trial goes WAITING → RUNNING (claimed) → COMPLETE, PRUNED or FAIL (finished by its
holder), or RUNNING → FAIL with a *lost* mark (taken over by another worker, which enqueues
a retry). Claiming, finishing and taking over are each one compare-and-set on the trial's
Optuna state, so exactly one process claims a waiting trial, and of a holder finishing and
another worker taking over exactly one wins. (On SQLite that needs the storage's
transactions to take the write lock first: :func:`hptransfer.study.storage.serialize_sqlite`.)

Every write a holder makes goes through :class:`OwnedTrial`, and Optuna's refusal to
update a finished trial, the one sign that another worker took it over, is caught in one
place (:meth:`OwnedTrial._fenced`) and raised as :class:`TakenOver`: the run was superseded.
Its retry records the run; whatever the late holder wrote before it noticed is never
counted (:mod:`hptransfer.study.schema` reads a taken-over trial as LOST, whatever its
attributes say). A trial is taken over only when its holder is gone
(:mod:`hptransfer.study.leases`): on this machine, when its process has ended; elsewhere,
when its heartbeat is older than the grace. A holder that is interrupted (Ctrl-C) hands its
trial back at once, so the next run retries it first.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord
from hptransfer.spec import ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.leases import Heartbeat, LeaseTiming, lease_timing, trial_holder_alive
from hptransfer.study.schema import (
    LOST_PREFIX,
    Attr,
    TrialRecord,
    TrialStatus,
    optuna_state,
    trial_record,
)

if TYPE_CHECKING:
    import optuna

__all__ = ["INTERRUPTED", "OwnedTrial", "TakenOver", "claim_next", "claim_waiting", "enqueue",
           "enqueue_retry", "reclaim_lost", "take_over", "trial_seed", "write_inputs",
           "write_outcome", "write_status"]

GONE = "its worker stopped (the process ended, or sent no heartbeat within the grace); retried"
INTERRUPTED = "interrupted (Ctrl-C) while it ran; retried first by the next run"


class TakenOver(Exception):
    """The trial this process was running was taken over by another worker (its lease
    lapsed: a host that vanished and came back, a network partition): the run is
    superseded, and its retry records it."""

    def __init__(self, study: str, number: int) -> None:
        super().__init__(f"{study} trial {number} was taken over by another worker while "
                         f"this one ran it (its lease lapsed); this run is superseded and "
                         f"recorded nothing: the trial's retry records it")
        self.study, self.number = study, number


# ---- enqueue and claim -----------------------------------------------------------------------

def enqueue(study: optuna.Study, params: dict[str, Any], **attrs: Any) -> None:
    """Enqueue a trial with ``params``; ``attrs`` are :class:`Attr` values (``grid_point``,
    ``from_width``, ``retry_of``, ``offset``, ``role``, …) by their key."""
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a lost trial's exact parameters once more, keeping where it came from."""
    kept = {k: v for k, v in trial.user_attrs.items()
            if k in (Attr.WIDTH, Attr.GRID_POINT, Attr.FROM_WIDTH, Attr.SEED, Attr.LADDER,
                     Attr.OFFSET, Attr.ROLE)}
    # a trial killed before its first parameter was suggested has them only as enqueued
    params = trial.params or trial.system_attrs.get("fixed_params", {})
    enqueue(study, params, **kept, **{Attr.RETRY_OF: trial.number})


def trial_seed(user_attrs: dict[str, Any], config: StudyConfig) -> int:
    """The seed a trial trains with: enqueued with it (a seed replicate), else the study's."""
    return int(user_attrs.get(Attr.SEED, config.seed))


def claim_waiting(study: optuna.Study, *, retries_only: bool = False
                  ) -> optuna.Trial | None:
    """Take an enqueued trial of ``study`` for this process, or None when none is waiting:
    retries of lost trials first (a run that was interrupted is run again before anything
    new, so a resumed width ends with the trials of one never interrupted), then the oldest.
    Never creates a trial. The WAITING → RUNNING state change is the compare-and-set, as in
    Optuna's own ``ask``."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    waiting = storage.get_all_trials(study._study_id, deepcopy=False,
                                     states=(TrialState.WAITING,))
    waiting = sorted(waiting, key=lambda t: (Attr.RETRY_OF not in t.user_attrs, t.number))
    for trial in waiting:
        if retries_only and Attr.RETRY_OF not in trial.user_attrs:
            break
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


def claim_next(study: optuna.Study) -> optuna.Trial:
    """The next trial for an Optuna sampler's worker: a waiting retry first, else Optuna's
    ``ask`` (the oldest enqueued trial, else a new point from the sampler)."""
    return claim_waiting(study, retries_only=True) or study.ask()


# ---- a trial this process holds --------------------------------------------------------------

def write_inputs(storage, trial_id: int, *, spec: ModelSpec, hparams: HParams,
                 corpus_hash: str, threads: int, seed: int,
                 attrs: tuple[tuple[str, Any], ...] = ()) -> None:
    """What a trial trains, before the run: a lost run still says what it was."""
    from hptransfer.provenance import collect

    for key, value in ((Attr.WIDTH, spec.width), (Attr.SPEC, spec.model_dump_json()),
                       (Attr.HPARAMS, hparams.model_dump_json()),
                       (Attr.CORPUS_HASH, corpus_hash), (Attr.SEED, seed),
                       (Attr.PROVENANCE, collect(threads).model_dump_json()), *attrs):
        storage.set_trial_user_attr(trial_id, key, value)


def write_status(storage, trial_id: int, status: TrialStatus, reason: str | None) -> None:
    """A status with its reason, for a trial that has no run record (error, pruned by a
    scheduler, retired), written before the state is told."""
    storage.set_trial_user_attr(trial_id, Attr.STATUS, status.value)
    storage.set_trial_user_attr(trial_id, Attr.REASON, reason)


def write_outcome(storage, trial_id: int, outcome: RunRecord | BaseException) -> TrialStatus:
    """What came of a run (status, reason, losses, curve, cost), or the exception that ended
    it; returns the status written. The Optuna state is told separately
    (:func:`~hptransfer.study.schema.optuna_state`): by the holder, or by the Ray driver."""
    if isinstance(outcome, BaseException):
        write_status(storage, trial_id, TrialStatus.ERROR,
                     f"{type(outcome).__name__}: {outcome}")
        return TrialStatus.ERROR
    status = TrialStatus.of_run(outcome.status)
    for key, value in ((Attr.STATUS, status.value), (Attr.REASON, outcome.reason),
                       (Attr.FINAL_VAL_LOSS, outcome.final_val_loss),
                       (Attr.VAL_CURVE, json.dumps([p.model_dump() for p in
                                                    outcome.val_curve])),
                       (Attr.FLOPS, outcome.flops), (Attr.WALL_TIME_S, outcome.wall_time_s),
                       (Attr.TOKENS_PER_S, outcome.tokens_per_s), (Attr.STEPS, outcome.steps),
                       (Attr.TOKENS_SEEN, outcome.tokens_seen),
                       (Attr.RESUMED_AT, json.dumps(list(outcome.resumed_at)))):
        storage.set_trial_user_attr(trial_id, key, value)
    return status


class OwnedTrial:
    """A trial this process claimed and holds until :meth:`finish` or :meth:`release`:
    its lease is held meanwhile, and each write is checked (:meth:`_fenced`)."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial,
                 timing: LeaseTiming | None = None) -> None:
        self.study, self.trial = study, trial
        self.storage, self.trial_id = study._storage, trial._trial_id
        self._lease: Heartbeat | None = None
        self._ended = False  # finished, taken over or handed back: nothing left to give up
        with self._fenced():
            self._lease = Heartbeat(self.storage, self.trial_id, timing)

    @property
    def number(self) -> int:
        return self.trial.number

    @contextlib.contextmanager
    def _fenced(self) -> Iterator[None]:
        """The one place a write to a trial another worker took over is caught."""
        from optuna.exceptions import UpdateFinishedTrialError

        try:
            yield
        except UpdateFinishedTrialError:
            self._ended = True
            raise TakenOver(self.study.study_name, self.number) from None

    def write_inputs(self, **inputs: Any) -> None:
        """What the trial trains (:func:`write_inputs`' keywords), before the run."""
        with self._fenced():
            write_inputs(self.storage, self.trial_id, **inputs)

    def report(self, point: CurvePoint) -> None:
        """A validation point, as it comes (live progress, the pruner's input)."""
        with self._fenced():
            self.trial.report(point.loss, point.tokens)

    def should_prune(self) -> bool:
        return self.trial.should_prune()

    def finish(self, outcome: RunRecord | BaseException) -> TrialRecord:
        """Write the run's outcome and tell its state (the compare-and-set against a
        takeover); the trial as recorded. Raises :class:`TakenOver` if another worker took
        it over first."""
        from optuna.trial import TrialState

        with self._fenced():
            status = write_outcome(self.storage, self.trial_id, outcome)
            state, value = optuna_state(status, getattr(outcome, "final_val_loss", None))
            try:
                self.study.tell(self.trial, value, state=state)
            except ValueError:  # "Cannot tell a FAIL trial": finished before tell looked
                if self.storage.get_trial(self.trial_id).state is TrialState.RUNNING:
                    raise
                self._ended = True
                raise TakenOver(self.study.study_name, self.number) from None
        self._ended = True
        self.release()
        return trial_record(self.study.study_name, self.storage.get_trial(self.trial_id))

    def hand_back(self, reason: str = INTERRUPTED) -> bool:
        """Give the trial up unfinished (interrupted): it is marked lost and its retry is
        enqueued now, to run first, instead of after its lease is found dead. False if it
        had finished or was taken over already."""
        self._ended = True
        self.release()
        return take_over(self.study, self.storage.get_trial(self.trial_id), reason)

    def release(self) -> None:
        """Stop holding the lease (idempotent). A trial released before it ended (an error
        between its run and its record) is given up in its lease, so that any worker takes
        it over at once rather than when this process ends."""
        if self._lease is not None:
            self._lease.stop(give_up=not self._ended)
            self._lease = None


# ---- taking over -----------------------------------------------------------------------------

def take_over(study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str) -> bool:
    """Mark a RUNNING trial lost and enqueue its retry; False when it finished meanwhile or
    another worker took it over first. The state change RUNNING → FAIL is the
    compare-and-set; only its winner marks the trial (a study attribute: a finished trial's
    own attributes cannot be written) and enqueues the retry."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    try:
        if not storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
            return False
    except UpdateFinishedTrialError:
        return False
    storage.set_study_system_attr(study._study_id, f"{LOST_PREFIX}{trial.number}", reason)
    enqueue_retry(study, trial)
    return True


def reclaim_lost(study: optuna.Study, timing: LeaseTiming | None = None) -> list[int]:
    """Take over every RUNNING trial whose holder is gone, and enqueue each once more; the
    numbers of the trials this worker took over."""
    from optuna.trial import TrialState

    timing = timing or lease_timing()
    return [trial.number for trial in study.get_trials(deepcopy=False,
                                                       states=(TrialState.RUNNING,))
            if not trial_holder_alive(trial, timing) and take_over(study, trial, GONE)]

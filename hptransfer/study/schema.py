"""The trial schema: what a trial records, and how an Optuna trial reads as a record.

A trial carries what it trained (width, spec, hparams, corpus hash, provenance) and what came
of it (status, reason, losses, curve, cost) as user attributes, keyed by :class:`Attr`. Its
Optuna state decides: a trial is RUNNING or WAITING whatever its attributes say (a process
that died mid-write may have written some), and a finished trial whose owner lost it to
another worker (:mod:`hptransfer.study.lifecycle`) is LOST whatever its late owner wrote.
Only this module maps a status to an Optuna state and back.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, Status
from hptransfer.spec import FrozenConfig
from hptransfer.study.names import WIDTH_SUFFIX

if TYPE_CHECKING:
    import optuna

__all__ = ["LOST_PREFIX", "Attr", "TrialRecord", "TrialStatus", "optuna_state",
           "recorded_state", "trial_record"]

# a study system attribute per trial taken over: "hptransfer:lost:NUMBER" → the reason.
# Written by the worker that took the trial over, after its compare-and-set won: a finished
# trial's own attributes cannot be written any more (Optuna refuses), and the trial's late
# owner may still be writing them (lifecycle.take_over).
LOST_PREFIX = "hptransfer:lost:"


class Attr:
    """The user-attribute keys of a trial: the schema of the record."""

    # what the trial trains, written before it runs (a lost run still says what it was)
    WIDTH = "width"
    SPEC = "spec"
    HPARAMS = "hparams"
    CORPUS_HASH = "corpus_hash"
    SEED = "seed"  # init and data seed; enqueued with the trial when not the study's own
    PROVENANCE = "provenance"
    # what came of it
    STATUS = "status"
    REASON = "reason"
    FINAL_VAL_LOSS = "final_val_loss"
    VAL_CURVE = "val_curve"
    FLOPS = "flops"
    WALL_TIME_S = "wall_time_s"
    TOKENS_PER_S = "tokens_per_s"
    STEPS = "steps"
    TOKENS_SEEN = "tokens_seen"
    RESUMED_AT = "resumed_at"  # steps the run resumed from a checkpoint at (JSON list)
    # where it came from, and where it ran
    RETRY_OF = "retry_of"  # the lost trial this one retries
    GRID_POINT = "grid_point"  # a warm-start grid trial
    FROM_WIDTH = "from_width"  # a warm-start point copied from a narrower width
    LADDER = "ladder"  # the ladder search's step that chose the trial (study.ladder.Step)
    BACKEND = "backend"
    WORKERS = "workers"
    # confirmation runs
    OFFSET = "offset"
    PREDICTED_LR = "predicted_lr"
    ROLE = "role"


class TrialStatus(str, Enum):
    """A trial's status in the record: a run's :class:`~hptransfer.record.Status`, or what
    became of a trial that has no run record."""

    COMPLETE = "complete"
    DIVERGED = "diverged"
    PRUNED = "pruned"
    RUNNING = "running"
    WAITING = "waiting"  # enqueued, not started
    LOST = "lost"  # its worker died, was interrupted or was taken over; a retry was enqueued
    ERROR = "error"  # the objective raised, or the run was retired; see ``reason``

    @classmethod
    def of_run(cls, status: Status) -> TrialStatus:
        return _OF_RUN[status]

    @property
    def finished(self) -> bool:
        """Counts towards ``--trials`` (lost trials are retried instead)."""
        return self in (TrialStatus.COMPLETE, TrialStatus.DIVERGED, TrialStatus.PRUNED,
                        TrialStatus.ERROR)


_OF_RUN = {Status.COMPLETE: TrialStatus.COMPLETE, Status.DIVERGED: TrialStatus.DIVERGED,
           Status.PRUNED: TrialStatus.PRUNED}


class TrialRecord(FrozenConfig):
    """One trial as the rest of hptransfer sees it."""

    study: str
    number: int
    width: int
    status: TrialStatus
    reason: str | None = None
    hparams: HParams | None = None
    final_val_loss: float | None = None
    val_curve: tuple[CurvePoint, ...] = ()
    flops: float = 0.0
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    retry_of: int | None = None
    seed: int | None = Field(None, description="the run's seed; None in trials recorded "
                                               "before seeds were per trial (the study's)")
    ladder: str | None = Field(None, description="the ladder step that chose it, if any")
    resumed_at: tuple[int, ...] = Field((), description="steps its run resumed from a "
                                                        "checkpoint at, if it was killed")

    @property
    def finished(self) -> bool:
        """Counts towards ``--trials`` (lost trials are retried instead)."""
        return self.status.finished

    @property
    def completed_loss(self) -> float | None:
        """The final validation loss of a completed trial with a finite one, else None."""
        ok = (self.status is TrialStatus.COMPLETE and self.final_val_loss is not None
              and math.isfinite(self.final_val_loss))
        return self.final_val_loss if ok else None


def optuna_state(status: TrialStatus, loss: float | None):
    """The Optuna state and value of a status: COMPLETE with the final validation loss,
    PRUNED, or FAIL for a diverged run (not a loss; it bounds the stable region), an error
    (recorded, never retried: it would fail again) and a lost trial."""
    from optuna.trial import TrialState

    if status is TrialStatus.COMPLETE and loss is not None:
        return TrialState.COMPLETE, loss
    if status is TrialStatus.PRUNED:
        return TrialState.PRUNED, None
    return TrialState.FAIL, None


def recorded_state(trial: optuna.trial.FrozenTrial):
    """The Optuna state and value of what a trial's attributes record, None when they
    record no outcome yet (the Ray driver tells the state its worker recorded)."""
    status = trial.user_attrs.get(Attr.STATUS)
    if status is None:
        return None
    return optuna_state(TrialStatus(status), trial.user_attrs.get(Attr.FINAL_VAL_LOSS))


_NO_OUTCOME = ("ended without a recorded outcome: its worker stopped, or lost it to another "
               "worker, before telling it")


def _status(trial: optuna.trial.FrozenTrial, lost: Mapping[int, str]
            ) -> tuple[TrialStatus, str | None]:
    """The status and reason of a trial: its Optuna state first (module docstring)."""
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    if trial.state is TrialState.RUNNING:
        return TrialStatus.RUNNING, None
    if trial.state is TrialState.WAITING:
        return TrialStatus.WAITING, None
    if trial.number in lost:
        return TrialStatus.LOST, lost[trial.number]
    written = attrs.get(Attr.STATUS)
    if trial.state is TrialState.COMPLETE:
        return TrialStatus.COMPLETE, attrs.get(Attr.REASON)
    if trial.state is TrialState.PRUNED:
        return TrialStatus.PRUNED, attrs.get(Attr.REASON)
    # FAIL: told by its owner with a diverged run or an error (or lost, in records written
    # before the marks were the taker's); an outcome that should have been COMPLETE or PRUNED
    # is one its owner wrote but never told: another worker took the trial over meanwhile
    if written in (TrialStatus.DIVERGED.value, TrialStatus.ERROR.value,
                   TrialStatus.LOST.value):
        return TrialStatus(written), attrs.get(Attr.REASON)
    return TrialStatus.LOST, _NO_OUTCOME


def trial_record(study_name: str, trial: optuna.trial.FrozenTrial,
                 lost: Mapping[int, str] | None = None) -> TrialRecord:
    """``trial`` of the Optuna study ``study_name`` as a record; ``lost``: the study's marks
    of taken-over trials, number → reason (:func:`hptransfer.study.records.lost_marks`).

    A trial whose attributes do not read back (an LR of inf written by an older version, a
    hand-edited storage) is reported in one warning and read as an ERROR with no inputs
    and no loss, which every reader skips: one bad record must not make every later
    command of the study fail."""
    status, reason = _status(trial, lost or {})
    try:
        return _record(study_name, trial, status, reason)
    except (ValueError, TypeError, KeyError) as error:  # pydantic's ValidationError too
        cause = " ".join(str(error).split())[:200]
        warnings.warn(f"trial {trial.number} of {study_name} has a record that cannot be read "
                      f"({type(error).__name__}: {cause}); it is skipped", stacklevel=2)
        match = WIDTH_SUFFIX.fullmatch(study_name)
        kept = status in (TrialStatus.RUNNING, TrialStatus.WAITING, TrialStatus.LOST)
        return TrialRecord(study=study_name, number=trial.number,
                           width=int(match["width"]) if match else 0,
                           status=status if kept else TrialStatus.ERROR,
                           reason=f"unreadable record: {cause}")


def _record(study_name: str, trial: optuna.trial.FrozenTrial, status: TrialStatus,
            reason: str | None) -> TrialRecord:
    attrs: dict[str, Any] = trial.user_attrs
    curve = tuple(CurvePoint(**p) for p in json.loads(attrs.get(Attr.VAL_CURVE, "[]")))
    loss = attrs.get(Attr.FINAL_VAL_LOSS)
    if status is TrialStatus.LOST:  # what a late owner wrote is its retry's to record
        curve, loss = (), None
    match = WIDTH_SUFFIX.fullmatch(study_name)
    return TrialRecord(
        study=study_name, number=trial.number,
        width=int(attrs.get(Attr.WIDTH) or match["width"]),
        status=status, reason=reason,
        hparams=(HParams.model_validate_json(attrs[Attr.HPARAMS]) if Attr.HPARAMS in attrs
                 else None),
        final_val_loss=loss, val_curve=curve,
        flops=attrs.get(Attr.FLOPS, 0.0), wall_time_s=attrs.get(Attr.WALL_TIME_S, 0.0),
        tokens_per_s=attrs.get(Attr.TOKENS_PER_S, 0.0), retry_of=attrs.get(Attr.RETRY_OF),
        seed=attrs.get(Attr.SEED), ladder=attrs.get(Attr.LADDER),
        resumed_at=tuple(json.loads(attrs.get(Attr.RESUMED_AT, "[]"))))

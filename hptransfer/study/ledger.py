"""The ledger: the one reader and writer of hptransfer's record in an Optuna storage.

One hptransfer study ``NAME`` is one Optuna study per proxy width, ``NAME.w{width}``, so
every sampler models one width's loss surface and optuna-dashboard shows each width on its
own; confirmation runs at a target width are ``NAME.confirm.w{width}``. A width study
carries the :class:`~hptransfer.study.config.StudyConfig` as a study attribute; a trial
carries what it trained (width, spec, hparams, corpus hash, provenance) and what came of it
(status, reason, losses, curve, cost) as user attributes, keyed by :class:`Attr`. Nothing
else is stored anywhere: predict, report, plot and confirm read this module's records, and
only this module names an attribute or maps a status to an Optuna state.
"""

from __future__ import annotations

import json
import math
import re
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.errors import StudyError
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord, Status
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.config import StudyConfig, refuse_different
from hptransfer.study.storage import Access

if TYPE_CHECKING:
    import optuna

__all__ = ["Attr", "LiveRun", "TrialRecord", "TrialStatus", "WidthSummary", "bind_config",
           "check_existing", "live_runs",
           "check_name", "claim_waiting", "confirmation_study_name", "confirmation_widths",
           "enqueue", "enqueue_retry", "finish_trial", "finished_count", "is_warm_started",
           "ladder_done", "load_config", "load_trials", "mark_ladder_done", "mark_lost",
           "mark_warm_started", "open_storage_arg", "optuna_state", "read_plan", "read_planner",
           "recorded_state", "running_count", "study_names", "summarize", "trial_record",
           "trial_seed", "waiting_count", "width_study_name", "widths_of", "write_inputs",
           "write_outcome", "write_placement", "write_plan", "write_planner", "write_status"]

CONFIG_ATTR = "hptransfer_config"  # study attribute of a width study: its StudyConfig
PLAN_ATTR = "hptransfer_confirmation"  # study attribute of a confirmation study: its plan
WARM_ATTR = "warm_started"  # study attribute: the warm-start trials were enqueued
LADDER_DONE_ATTR = "ladder_done"  # study attribute: why the ladder needs no more trials
PLANNER_ATTR = "ladder_planner"  # study attribute: host, pid, heartbeat of the planning tune
PLACEMENT_ATTR = "placement"  # study attribute: workers × threads of its last local tune
_WIDTH_SUFFIX = re.compile(r"^(?P<name>.+)\.w(?P<width>\d+)$")


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
    LOST = "lost"  # its worker died; a retry was enqueued
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


# ---- names -----------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(name: str) -> str:
    """A study name: letters, digits, ``-``, ``_`` and ``.``, starting with a letter or a
    digit (it names Optuna studies and the files of plots and reports)."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise StudyError(f"study name {name!r}: use letters, digits, '-', '_' and '.', "
                         f"starting with a letter or digit, at most 128 characters (it names "
                         f"Optuna studies and report files, so no '/' or spaces)")
    return name


def width_study_name(name: str, width: int) -> str:
    return f"{check_name(name)}.w{width}"


def confirmation_study_name(study: str, width: int) -> str:
    return f"{check_name(study)}.confirm.w{width}"


def open_storage_arg(storage: optuna.storages.BaseStorage | str | None,
                     access: Access = Access.READ) -> optuna.storages.BaseStorage:
    """Accept an Optuna storage or a URL (None: the default local SQLite file), which is
    opened for ``access`` (reading, by default: nothing is created or changed)."""
    if storage is None or isinstance(storage, str):
        from hptransfer.study.storage import open_storage

        return open_storage(storage, access)
    return storage


def study_names(storage: optuna.storages.BaseStorage | str | None = None
                ) -> dict[str, list[int]]:
    """hptransfer study name → widths, for every study in ``storage``.

    A confirmation study also matches ``NAME.w{width}`` (as ``NAME = {study}.confirm``) but
    carries no study config: it is never listed here.
    """
    storage = open_storage_arg(storage)
    found: dict[str, list[int]] = {}
    for summary in storage.get_all_studies():
        match = _WIDTH_SUFFIX.match(summary.study_name)
        if match and CONFIG_ATTR in summary.user_attrs:
            found.setdefault(match["name"], []).append(int(match["width"]))
    return {name: sorted(widths) for name, widths in sorted(found.items())}


def widths_of(name: str, storage: optuna.storages.BaseStorage | str | None = None
              ) -> list[int]:
    storage = open_storage_arg(storage)
    widths = study_names(storage).get(name)
    if not widths:
        known = ", ".join(study_names(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage (studies here: {known}); "
                         f"create it with: hptransfer tune --study {name}")
    return widths


def confirmation_widths(study: str, storage: optuna.storages.BaseStorage | str | None = None
                        ) -> list[int]:
    """Target widths with confirmation runs of ``study`` in ``storage``."""
    pattern = re.compile(rf"^{re.escape(study)}\.confirm\.w(\d+)$")
    return sorted(int(m[1]) for s in open_storage_arg(storage).get_all_studies()
                  if (m := pattern.match(s.study_name)) and PLAN_ATTR in s.user_attrs)


# ---- study attributes ------------------------------------------------------------------------

def load_config(name: str, storage: optuna.storages.BaseStorage | str | None = None
                ) -> StudyConfig:
    import optuna

    storage = open_storage_arg(storage)
    width = widths_of(name, storage)[0]
    study = optuna.load_study(study_name=width_study_name(name, width), storage=storage)
    return StudyConfig.model_validate_json(study.user_attrs[CONFIG_ATTR])


def check_existing(name: str, config: StudyConfig, storage) -> None:
    """Refuse, before any trial runs, a config that differs from the study's stored one."""
    if name in study_names(storage):
        refuse_different(name, load_config(name, storage), config)


def bind_config(study: optuna.Study, name: str, config: StudyConfig) -> None:
    """Store ``config`` on a new width study; refuse a different one on an existing study."""
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, config.model_dump_json())
    else:
        refuse_different(name, StudyConfig.model_validate_json(stored), config)


def is_warm_started(study: optuna.Study) -> bool:
    return bool(study.user_attrs.get(WARM_ATTR))


def mark_warm_started(study: optuna.Study) -> None:
    study.set_user_attr(WARM_ATTR, True)


def ladder_done(study: optuna.Study) -> str | None:
    """Why the ladder search of this width study needs no more trials, or None."""
    return study.user_attrs.get(LADDER_DONE_ATTR)


def mark_ladder_done(study: optuna.Study, reason: str | None) -> None:
    """Say why the width is done (its followers stop), or None: its planner starts again
    (a re-run may allow more trials than the run that marked it done)."""
    study.set_user_attr(LADDER_DONE_ATTR, reason)


def write_planner(study: optuna.Study, host: str, pid: int, beat: float) -> None:
    """The process planning this width's ladder rounds, and when it last said so."""
    study.set_user_attr(PLANNER_ATTR, {"host": host, "pid": pid, "beat": beat})


def read_planner(study: optuna.Study) -> dict[str, Any] | None:
    return study.user_attrs.get(PLANNER_ATTR)


def write_placement(study: optuna.Study, placement: dict[str, Any]) -> None:
    """How the last local tune of this width placed its trials (workers, threads, auto);
    each trial's own threads are in its provenance."""
    study.set_user_attr(PLACEMENT_ATTR, placement)


def write_plan(study: optuna.Study, plan: str) -> None:
    """Store what a confirmation study confirms (JSON: the prediction, offsets, tolerance)."""
    study.set_user_attr(PLAN_ATTR, plan)


def read_plan(study: optuna.Study) -> str | None:
    """The stored plan's JSON (see :func:`write_plan`), None if there is none."""
    return study.user_attrs.get(PLAN_ATTR)


# ---- writing trials --------------------------------------------------------------------------

def enqueue(study: optuna.Study, params: dict[str, Any], **attrs: Any) -> None:
    """Enqueue a trial with ``params``; ``attrs`` are :class:`Attr` values (``grid_point``,
    ``from_width``, ``retry_of``, ``offset``, ``role``, …) by their key."""
    study.enqueue_trial(params, user_attrs=attrs, skip_if_exists=False)


def trial_seed(user_attrs: dict[str, Any], config: StudyConfig) -> int:
    """The seed a trial trains with: enqueued with it (a seed replicate), else the study's."""
    return int(user_attrs.get(Attr.SEED, config.seed))


def claim_waiting(study: optuna.Study) -> optuna.Trial | None:
    """Take the oldest enqueued trial of ``study`` for this process, or None when none is
    waiting. Never creates a trial: the ladder's workers run only what was planned. The
    WAITING → RUNNING state change is the compare-and-set, as in Optuna's own ``ask``."""
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    storage = study._storage
    for trial in storage.get_all_trials(study._study_id, deepcopy=False,
                                        states=(TrialState.WAITING,)):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING):
                return optuna.Trial(study, trial._trial_id)
        except UpdateFinishedTrialError:
            continue
    return None


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
    """A status with its reason, for a trial that has no run record (lost, error, pruned
    by a scheduler, retired)."""
    storage.set_trial_user_attr(trial_id, Attr.STATUS, status.value)
    storage.set_trial_user_attr(trial_id, Attr.REASON, reason)


def write_outcome(storage, trial_id: int, outcome: RunRecord | BaseException) -> TrialStatus:
    """What came of a run (status, reason, losses, curve, cost), or the exception that ended
    it; returns the status written. The Optuna state is told separately
    (:func:`optuna_state`): by the worker here, by the Ray driver on a cluster."""
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


def finish_trial(study: optuna.Study, trial: optuna.Trial,
                 outcome: RunRecord | BaseException) -> TrialRecord:
    """Write a run's outcome, tell Optuna its state, and return the trial as recorded."""
    storage = study._storage
    state, value = optuna_state(write_outcome(storage, trial._trial_id, outcome),
                                getattr(outcome, "final_val_loss", None))
    study.tell(trial, value, state=state)
    return trial_record(study.study_name, storage.get_trial(trial._trial_id))


def mark_lost(storage, trial: optuna.trial.FrozenTrial) -> bool:
    """Mark a RUNNING trial FAIL with status ``lost``; False when another worker won the
    race (or it finished after all). The state change is the compare-and-set."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    try:
        # attributes before the state: Optuna refuses to update a finished trial
        write_status(storage, trial._trial_id, TrialStatus.LOST,
                     "worker died or stopped sending heartbeats; retried")
        return storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return False


def enqueue_retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Enqueue a lost trial's exact parameters once more, keeping where it came from."""
    kept = {k: v for k, v in trial.user_attrs.items()
            if k in (Attr.WIDTH, Attr.GRID_POINT, Attr.FROM_WIDTH, Attr.SEED, Attr.LADDER,
                     Attr.OFFSET, Attr.ROLE)}
    enqueue(study, trial.params, **kept, **{Attr.RETRY_OF: trial.number})


# ---- reading trials --------------------------------------------------------------------------

def trial_record(study_name: str, trial: optuna.trial.FrozenTrial) -> TrialRecord:
    from optuna.trial import TrialState

    attrs: dict[str, Any] = trial.user_attrs
    status = attrs.get(Attr.STATUS)
    if status is None:
        status = {TrialState.RUNNING: TrialStatus.RUNNING, TrialState.WAITING:
                  TrialStatus.WAITING, TrialState.COMPLETE: TrialStatus.COMPLETE,
                  TrialState.PRUNED: TrialStatus.PRUNED}.get(trial.state, TrialStatus.ERROR)
    curve = tuple(CurvePoint(**p) for p in json.loads(attrs.get(Attr.VAL_CURVE, "[]")))
    match = _WIDTH_SUFFIX.match(study_name)
    return TrialRecord(
        study=study_name, number=trial.number,
        width=int(attrs.get(Attr.WIDTH) or match["width"]),
        status=TrialStatus(status), reason=attrs.get(Attr.REASON),
        hparams=(HParams.model_validate_json(attrs[Attr.HPARAMS]) if Attr.HPARAMS in attrs
                 else None),
        final_val_loss=attrs.get(Attr.FINAL_VAL_LOSS), val_curve=curve,
        flops=attrs.get(Attr.FLOPS, 0.0), wall_time_s=attrs.get(Attr.WALL_TIME_S, 0.0),
        tokens_per_s=attrs.get(Attr.TOKENS_PER_S, 0.0), retry_of=attrs.get(Attr.RETRY_OF),
        seed=attrs.get(Attr.SEED), ladder=attrs.get(Attr.LADDER),
        resumed_at=tuple(json.loads(attrs.get(Attr.RESUMED_AT, "[]"))))


def load_trials(name: str, storage: optuna.storages.BaseStorage | str | None = None,
                widths: list[int] | None = None) -> list[TrialRecord]:
    """Every trial of study ``name`` (all widths unless given), as immutable records.

    ``storage`` is an Optuna storage or a URL (None: the default local SQLite file).
    """
    import optuna

    storage = open_storage_arg(storage)
    records = []
    for width in widths or widths_of(name, storage):
        study_name = width_study_name(name, width)
        study = optuna.load_study(study_name=study_name, storage=storage)
        records.extend(trial_record(study_name, t) for t in study.get_trials(deepcopy=False))
    return records


def finished_count(study: optuna.Study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.is_finished() and t.user_attrs.get(Attr.STATUS) != TrialStatus.LOST)


def running_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def waiting_count(study: optuna.Study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))


class WidthSummary(FrozenConfig):
    """What a width's trials amount to: counts, the best trial, and what they cost."""

    width: int
    finished: int
    complete: int
    diverged: int
    pruned: int
    lost: int
    errors: int
    best_number: int | None
    best_loss: float | None
    best_hparams: HParams | None
    flops: float
    wall_time_s: float


def summarize(records: list[TrialRecord]) -> list[WidthSummary]:
    """One summary per width, in width order."""
    out = []
    for width in sorted({r.width for r in records}):
        rows = [r for r in records if r.width == width]
        complete = [r for r in rows if r.status is TrialStatus.COMPLETE]
        best = min(complete, key=lambda r: r.final_val_loss, default=None)

        def count(status: TrialStatus, rows=rows) -> int:
            return sum(1 for r in rows if r.status is status)

        out.append(WidthSummary(
            width=width, finished=sum(1 for r in rows if r.finished), complete=len(complete),
            diverged=count(TrialStatus.DIVERGED), pruned=count(TrialStatus.PRUNED),
            lost=count(TrialStatus.LOST), errors=count(TrialStatus.ERROR),
            best_number=best.number if best else None,
            best_loss=best.final_val_loss if best else None,
            best_hparams=best.hparams if best else None,
            flops=sum(r.flops for r in rows), wall_time_s=sum(r.wall_time_s for r in rows)))
    return out


class LiveRun(FrozenConfig):
    """A run in progress, from its trial: the validation points it has reported so far."""

    study: str  # the Optuna study: a width's, or a confirmation's (NAME.confirm.wWIDTH)
    number: int
    offset: float | None = None  # a confirmation run's LR offset
    points: tuple[tuple[int, float], ...]  # (training tokens, validation loss), in order
    tokens_planned: int | None = None


def live_runs(name: str, storage: optuna.storages.BaseStorage | str | None = None
              ) -> list[LiveRun]:
    """Every running trial of study ``name``, its widths' and its confirmations', with the
    validation curve it has written so far (what ``hptransfer status`` shows)."""
    from optuna.trial import TrialState

    storage = open_storage_arg(storage)
    config = None
    found = []
    for summary in storage.get_all_studies():
        match = _WIDTH_SUFFIX.match(summary.study_name)
        if not match or match["name"] not in (name, f"{name}.confirm"):
            continue
        study_id = storage.get_study_id_from_name(summary.study_name)
        for trial in storage.get_all_trials(study_id, deepcopy=False,
                                            states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            planned = None
            if Attr.HPARAMS in attrs and Attr.SPEC in attrs:
                config = config or load_config(name, storage)
                per_step = (HParams.model_validate_json(attrs[Attr.HPARAMS]).batch_size
                            * ModelSpec.model_validate_json(attrs[Attr.SPEC]).seq_len)
                planned = config.budget.resolve_steps(tokens_per_step=per_step) * per_step
            found.append(LiveRun(
                study=summary.study_name, number=trial.number, offset=attrs.get(Attr.OFFSET),
                points=tuple(sorted(trial.intermediate_values.items())),
                tokens_planned=planned))
    return found

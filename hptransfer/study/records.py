"""Read models: the trials of a study as records, counted, summarized, and live.

Everything that reads the record (predict, report, plot, confirm, the ladder's planner, the
workers' counts) reads it here, through :func:`~hptransfer.study.schema.trial_record` and
the study's marks of taken-over trials, so a trial has one status wherever it is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hptransfer.hparams import HParams
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.attributes import load_config, widths_of
from hptransfer.study.names import WIDTH_SUFFIX, open_storage_arg, width_study_name
from hptransfer.study.schema import LOST_PREFIX, Attr, TrialRecord, TrialStatus, trial_record

if TYPE_CHECKING:
    import optuna

__all__ = ["LiveRun", "WidthSummary", "finished_count", "live_runs", "load_trials",
           "lost_marks", "records_of", "running_count", "summarize", "waiting_count"]


def lost_marks(storage, study_id: int) -> dict[int, str]:
    """The trials of a study that another worker took over: number → reason."""
    return {int(key[len(LOST_PREFIX):]): reason
            for key, reason in storage.get_study_system_attrs(study_id).items()
            if key.startswith(LOST_PREFIX)}


def records_of(study: optuna.Study, states=None) -> list[TrialRecord]:
    """The trials of one Optuna study (``states``: only those) as records."""
    storage = study._storage
    lost = lost_marks(storage, study._study_id)
    return [trial_record(study.study_name, t, lost)
            for t in study.get_trials(deepcopy=False, states=states)]


def load_trials(name: str, storage: optuna.storages.BaseStorage | str | None = None,
                widths: list[int] | None = None) -> list[TrialRecord]:
    """Every trial of study ``name`` (all widths unless given), as immutable records.

    ``storage`` is an Optuna storage or a URL (None: the default local SQLite file).
    """
    import optuna

    storage = open_storage_arg(storage)
    records = []
    for width in widths or widths_of(name, storage):
        study = optuna.load_study(study_name=width_study_name(name, width), storage=storage)
        records.extend(records_of(study))
    return records


def finished_count(study: optuna.Study) -> int:
    """Trials that count towards ``--trials`` (lost ones are retried instead)."""
    return sum(1 for r in records_of(study) if r.finished)


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
        match = WIDTH_SUFFIX.fullmatch(summary.study_name)
        if not match or match["name"] not in (name, f"{name}.confirm"):
            continue
        study_id = storage.get_study_id_from_name(summary.study_name)
        for trial in storage.get_all_trials(study_id, deepcopy=False,
                                            states=(TrialState.RUNNING,)):
            attrs = trial.user_attrs
            planned = None
            if Attr.HPARAMS in attrs and Attr.SPEC in attrs:
                config = config or load_config(name, storage)
                try:
                    per_step = (HParams.model_validate_json(attrs[Attr.HPARAMS]).batch_size
                                * ModelSpec.model_validate_json(attrs[Attr.SPEC]).seq_len)
                except ValueError:  # an unreadable record: shown without its plan
                    per_step = None
                if per_step is not None:
                    planned = config.budget.resolve_steps(tokens_per_step=per_step) * per_step
            found.append(LiveRun(
                study=summary.study_name, number=trial.number, offset=attrs.get(Attr.OFFSET),
                points=tuple(sorted(trial.intermediate_values.items())),
                tokens_planned=planned))
    return found

"""A run becomes a trial: :func:`record_run`, shared by tune workers and confirmation runs."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord, Verdict
from hptransfer.spec import ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.leases import LeaseWarning
from hptransfer.study.lifecycle import INTERRUPTED, OwnedTrial, TakenOver, trial_seed
from hptransfer.study.names import CONFIRM_SUFFIX, WIDTH_SUFFIX
from hptransfer.study.schema import Attr, TrialRecord, TrialStatus
from hptransfer.tracking import RunInfo, RunLog, RunRole, Tracking

if TYPE_CHECKING:
    import optuna

    from hptransfer.data.corpus import Corpus
    from hptransfer.training.execution import Execution
    from hptransfer.training.loop import EvalCallback

__all__ = ["record_run", "run_info"]


def record_run(study: optuna.Study, trial: optuna.Trial, *, spec: ModelSpec,
               hparams: HParams, config: StudyConfig, corpus: Corpus, threads: int,
               attrs: tuple[tuple[str, Any], ...] = (), prune: bool = False,
               device: str | None = None, execution: Execution | None = None,
               trainer: Callable[[EvalCallback], RunRecord] | None = None,
               tracking: Tracking | None = None) -> TrialRecord | None:
    """Train ``spec``/``hparams`` as ``trial`` of ``study``, holding its lease, and record
    it; the trial as recorded.

    The one place a run becomes a trial (tune trials and confirmation runs alike). The
    training is :func:`hptransfer.training.loop.train` in this process (on ``device``, with
    ``execution``), or ``trainer(on_eval)`` when the run is trained elsewhere (a Ray Train or
    torchrun job: this process holds the lease while it runs). Every validation point is
    reported to the trial as it comes (live progress for ``hptransfer status`` and
    optuna-dashboard); with ``prune`` the study's pruner may stop the run there. An exception
    is recorded as the trial's error, never raised: it would only fail again on a retry.

    Two ends are not a record. A trial another worker took over while this one ran it (its
    lease lapsed) stops at the next validation point, says so in one line
    (:class:`~hptransfer.study.leases.LeaseWarning`) and returns None: its retry records
    the run. Ctrl-C hands the trial back for a retry that runs first, and is raised on.

    ``tracking``: the trackers this process logs the run to (:mod:`hptransfer.tracking`),
    when it is the process that trains it (with ``trainer``, a torchrun job's rank 0; a Ray
    Train job's rank 0 logs its own run): each validation point as it comes, then the
    status as recorded (lost when taken over or handed back).
    """
    from hptransfer.training.loop import train

    try:
        owned = OwnedTrial(study, trial)
    except TakenOver as error:  # finished or taken over between the claim and the lease
        _superseded(error)
        return None
    taken: list[TakenOver] = []
    log: RunLog | None = None
    try:
        seed = trial_seed(trial.user_attrs, config)
        owned.write_inputs(spec=spec, hparams=hparams, corpus_hash=corpus.content_hash,
                           threads=threads, seed=seed, attrs=attrs)
        log = RunLog(tracking, run_info(study.study_name, trial.number, spec=spec,
                                        hparams=hparams, seed=seed,
                                        attrs={**trial.user_attrs, **dict(attrs)}))

        def on_eval(point: CurvePoint) -> Verdict:
            log.point(point)
            try:
                owned.report(point)
            except TakenOver as error:  # stop every rank at this point, then say so
                taken.append(error)
                return Verdict.STOP
            return Verdict.STOP if prune and owned.should_prune() else Verdict.CONTINUE

        try:
            outcome: RunRecord | Exception = trainer(on_eval) if trainer is not None else train(
                spec, hparams, config.budget, corpus, seed=seed, on_eval=on_eval,
                threads=threads, device=device, execution=execution)
        except Exception as error:
            outcome = error
        if taken:
            raise taken[0]
        recorded = owned.finish(outcome)
        log.finish(recorded.status.value, outcome if isinstance(outcome, RunRecord) else None,
                   recorded.reason)
        return recorded
    except TakenOver as error:
        if log is not None:
            log.finish(TrialStatus.LOST.value, reason=str(error))
        _superseded(error)
        return None
    except KeyboardInterrupt:
        if log is not None:
            log.finish(TrialStatus.LOST.value, reason=INTERRUPTED)
        owned.hand_back()
        raise
    finally:
        owned.release()


def run_info(optuna_study: str, number: int, *, spec: ModelSpec, hparams: HParams, seed: int,
             attrs: dict[str, Any]) -> RunInfo:
    """Trial ``number`` of the Optuna study ``optuna_study`` as a tracker shows it (its
    user attributes ``attrs`` say which ladder step or confirmation offset it is)."""
    match = WIDTH_SUFFIX.fullmatch(optuna_study)
    study = match["name"] if match else optuna_study
    confirmation = attrs.get(Attr.ROLE) == RunRole.CONFIRMATION.value
    return RunInfo(study=study.removesuffix(CONFIRM_SUFFIX) if confirmation else study,
                   role=RunRole.CONFIRMATION if confirmation else RunRole.TRIAL,
                   trial=number, spec=spec, hparams=hparams, seed=seed,
                   ladder=attrs.get(Attr.LADDER), offset=attrs.get(Attr.OFFSET),
                   predicted_lr=attrs.get(Attr.PREDICTED_LR))


def _superseded(error: TakenOver) -> None:
    warnings.warn(str(error), LeaseWarning, stacklevel=3)

"""Confirmation runs: train the predicted point and its LR neighbours at the target width.

:func:`confirm` asks :func:`hptransfer.transfer.predict_hparams` for the target's hparams and
trains the target model at the predicted base LR α and at α·2^offset for each offset
(default −1, −½, 0, +½, +1 octave; every other hparam as predicted), with the study's
budget, seed and corpus. The runs share the seed, so they are paired (same init, same
batches): a loss difference between two of them is the LR's doing, not the seed's.

The runs are trials of one more Optuna study in the study's storage,
``{study}.confirm.w{width}`` (:mod:`hptransfer.study.names`), recorded like tune trials plus
their offset, the predicted LR and where they ran, which is their launcher's business
(:mod:`hptransfer.confirmation.launchers`): this process (on the CPU or a GPU), a Ray Train
job of ``workers`` data-parallel workers (:mod:`hptransfer.backends.ray_train`), or every
rank of a torchrun job (:mod:`hptransfer.confirmation.torchrun`), replicated or sharded
with FSDP2. Re-running :func:`confirm` trains only the offsets that have no finished
run for the same prediction, and a run that was killed resumes from its last checkpoint
(every 10 minutes by default, under ``$HPTRANSFER_HOME/checkpoints``). Each run's validation
curve is written to its trial while it trains. The verdict is
:func:`hptransfer.confirmation.verdict.judge`'s.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from hptransfer.backends import Backend
from hptransfer.confirmation.launchers import Launcher, LocalLauncher, TrialRef, make_launcher
from hptransfer.confirmation.verdict import (
    DEFAULT_OFFSETS,
    OFFSET_MATCH,
    TOLERANCE,
    Confirmation,
    ConfirmationRun,
    check_offsets,
    summarize,
)
from hptransfer.errors import ConfigError, PredictionError, StudyError
from hptransfer.hparams import HParams
from hptransfer.study.attributes import load_config, read_plan, write_placement, write_plan
from hptransfer.study.lifecycle import claim_waiting, enqueue, write_status
from hptransfer.study.names import check_name, confirmation_study_name, open_storage_arg
from hptransfer.study.records import lost_marks, waiting_count
from hptransfer.study.schema import Attr, TrialStatus, trial_record
from hptransfer.study.storage import Access
from hptransfer.tracking import Tracking, log_result, ready, resolve
from hptransfer.training.execution import Checkpointing, Execution

if TYPE_CHECKING:
    from hptransfer.spec import Precision

__all__ = ["confirm", "load_confirmation"]

ROLE = "confirmation"
_POLL_S = 1.0  # how often a confirm waiting for another process's runs looks again
_STOP_S = 20.0  # how long Ctrl-C waits for helper processes to hand their runs back


def _offset_of(lr: float, predicted: float, offsets: Sequence[float]) -> float:
    exact = math.log2(lr / predicted)
    return next((o for o in offsets if abs(o - exact) < OFFSET_MATCH), round(exact, 6))


def _runs(optuna_study, predicted: HParams, offsets: Sequence[float] | None
          ) -> list[ConfirmationRun]:
    """One run per offset (``offsets`` None: every offset recorded) for this prediction: the
    finished one if any, else the running or waiting one. Lost runs are skipped (retried)."""
    name = optuna_study.study_name
    lost = lost_marks(optuna_study._storage, optuna_study._study_id)
    found: dict[float, ConfirmationRun] = {}
    for trial in optuna_study.get_trials(deepcopy=False):
        # a waiting trial's LR is only in its enqueued parameters (a killed confirm leaves its
        # unstarted runs, and a lost run's retry, waiting: they must not be enqueued again)
        lr = trial.params.get("lr", trial.system_attrs.get("fixed_params", {}).get("lr"))
        record = trial_record(name, trial, lost)
        if lr is None or record.status is TrialStatus.LOST:
            continue
        if record.hparams is not None:
            if record.hparams != HParams(**{**predicted.model_dump(), "lr": lr}):
                continue  # a run of an earlier prediction
        elif record.status not in (TrialStatus.WAITING, TrialStatus.RUNNING):
            continue  # (a run another process claimed a moment ago has no inputs yet)
        offset = _offset_of(lr, predicted.lr, offsets or [])
        if offsets is not None and offset not in offsets:
            continue
        run = ConfirmationRun(offset=offset, lr=lr, status=record.status,
                              loss=record.final_val_loss, number=trial.number,
                              reason=record.reason)
        previous = found.get(offset)
        if previous is None or not _is_finished(previous) or _is_finished(run):
            found[offset] = run
    return [found[o] for o in sorted(found)]


def _is_finished(run: ConfirmationRun) -> bool:
    return run.status not in (TrialStatus.RUNNING, TrialStatus.WAITING)


def _run_one(optuna_study, trial, hparams: HParams, attrs: tuple[tuple[str, Any], ...],
             job: _Job) -> None:
    """Train one confirmation run where ``job.launcher`` trains them and record it like a
    tune trial (no pruning): this process holds the lease and writes the record wherever
    the run trains. The process that trains it logs it to ``job.tracking``'s trackers
    (:meth:`~hptransfer.confirmation.launchers.Launcher.trackers`)."""
    from hptransfer.study.lifecycle import trial_seed
    from hptransfer.study.trial import record_run, run_info
    from hptransfer.training.order import RunOrder

    launcher = job.launcher

    def trainer(on_eval):  # (built here: anything it raises is the run's recorded error)
        seed = trial_seed(trial.user_attrs, job.config)
        order = RunOrder(spec=job.spec, hparams=hparams, budget=job.config.budget, seed=seed,
                         data=job.config.data, corpus_hash=job.config.corpus_hash,
                         execution=launcher.execution)
        info = run_info(optuna_study.study_name, trial.number, spec=job.spec, hparams=hparams,
                        seed=seed, attrs={**trial.user_attrs, **dict(attrs)})
        return launcher.run(order, on_eval, TrialRef(
            name=f"{optuna_study.study_name}.t{trial.number}", trial_id=trial._trial_id,
            info=info, tracking=job.tracking, corpus=job.corpus))

    record_run(optuna_study, trial, spec=job.spec, hparams=hparams, config=job.config,
               corpus=job.corpus, threads=launcher.threads,
               attrs=(*attrs, (Attr.BACKEND, launcher.backend.value),
                      (Attr.WORKERS, launcher.workers)),
               trainer=trainer, tracking=launcher.trackers(job.tracking))


def default_execution() -> Execution:
    """A confirmation run's default: replicated, eager, a checkpoint every 10 minutes under
    ``$HPTRANSFER_HOME/checkpoints`` (short runs never reach one)."""
    from hptransfer.study.storage import home

    return Execution(checkpoint=Checkpointing(folder=home() / "checkpoints", every_minutes=10))


def _with_owner(launcher: Launcher, storage: Any, url: str | None, study: str
                ) -> Launcher:
    """The launcher with its checkpoints bound to this storage and confirmation study: a
    run of the same prediction recorded elsewhere must not resume from them (its record
    would say it resumed from a run it never made)."""
    policy = launcher.execution.checkpoint
    if policy is None:
        return launcher
    where = url or getattr(getattr(storage, "_backend", None), "_file_path", None) \
        or f"{type(storage).__name__}@{id(storage):x}"  # an object: this process's only
    owned = policy.model_copy(update={"owner": f"{where}#{study}"})
    return dataclasses.replace(launcher, execution=launcher.execution.model_copy(
        update={"checkpoint": owned}))


def _storage_url(storage: Any) -> str | None:
    """The URL of ``storage`` (None: the default one), or None if it is an object without
    one (a journal or in-memory storage built by the caller)."""
    from hptransfer.study.storage import normalize

    if storage is None or isinstance(storage, str):
        return normalize(storage)
    return getattr(storage, "url", None)  # Optuna's RDBStorage keeps its URL


def confirm(target_width: int, *, study: str = "proxy", storage: Any = None,
            offsets: Sequence[float] = DEFAULT_OFFSETS, threads: int | None = None,
            tolerance: float = TOLERANCE,
            on_run: Callable[[ConfirmationRun], None] | None = None,
            backend: Backend = Backend.LOCAL, workers: int | str = "auto",
            address: str | None = None, cpus_per_worker: int = 1, gpus_per_worker: float = 0.0,
            device: str | None = None, execution: Execution | None = None,
            precision: Precision | None = None, model: str | None = None,
            tracking: Tracking | None = None) -> Confirmation | None:
    """Train the prediction for ``target_width`` and its LR neighbours α·2^offset, record
    them in ``storage`` and judge the prediction (module docstring).

    ``storage`` is an Optuna storage or URL (None: ``$HPTRANSFER_HOME/studies.db``). Runs
    already finished for the same prediction are not trained again. ``on_run`` is called
    after each new run. Raises :class:`~hptransfer.errors.PredictionError` when the study
    cannot support a prediction, :class:`~hptransfer.errors.CorpusError` when its corpus
    changed, :class:`~hptransfer.errors.StudyError` with ``backend=Backend.RAY`` when Ray is
    missing or the storage is a file that a multi-node cluster cannot share, and ValueError
    for options that do not fit together.

    Locally, ``workers`` processes train runs side by side with ``threads`` threads each;
    ``"auto"`` (the default) picks both from the target width and the CPUs
    (:func:`hptransfer.study.runner.auto_placement`: at small widths one thread per run).
    Each run's losses depend only on its own threads, so they equal one process's.

    ``backend=Backend.RAY`` trains each run as a Ray Train job on the cluster at ``address``
    (:func:`hptransfer.backends.cluster.connect`) with ``workers`` data-parallel workers of
    ``cpus_per_worker`` CPUs (and threads) each (``"auto"``: 1); the predicted batch size
    must be divisible by ``workers``. ``threads`` is for local runs only. With
    ``gpus_per_worker`` > 0 each worker trains on (that share of) a GPU over NCCL.

    ``backend=Backend.TORCHRUN``: this process is one rank of a torchrun job
    (:mod:`hptransfer.confirmation.torchrun`); every rank calls :func:`confirm`, rank 0 returns
    the confirmation, the others train what it sends and return None.

    ``device``: a local run's (``cpu``, ``cuda``, ``cuda:N``; one run at a time on a card),
    or a torchrun rank's (None: its own GPU if torch sees one). ``execution``: sharding
    (FSDP2 over a Ray or torchrun job's workers), ``torch.compile`` and checkpoints (None:
    :func:`default_execution`). ``precision`` overrides the study's for the target runs
    (bf16 autocast on a GPU: fp32 weights and optimizer state, bf16 matmuls).

    ``tracking`` logs every run to experiment trackers (:mod:`hptransfer.tracking`; None:
    ``$HPTRANSFER_TRACKER``'s, if set) from the process that trains it, and the verdict
    as a run of its own beside them; a tracker that cannot log is off, with one warning.
    """
    execution = execution if execution is not None else default_execution()
    check_name(study)  # (a reserved name: its confirmation study is no study's)
    try:  # before anything is written: an lr of inf or nan is a record nothing can read
        offsets = check_offsets(offsets)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if not 0 < tolerance < 1:
        raise ConfigError(f"tolerance is a relative loss in (0, 1), got {tolerance}")
    launcher = make_launcher(backend, threads=threads, workers=workers, width=target_width,
                             address=address, cpus_per_worker=cpus_per_worker,
                             gpus_per_worker=gpus_per_worker, device=device,
                             execution=execution)
    # (torchrun: rank 0 records, the other ranks train what it sends and return None)
    return launcher.lead(lambda ready: _confirm(
        target_width, study=study, storage=storage, offsets=offsets, tolerance=tolerance,
        on_run=on_run, launcher=ready, precision=precision, model=model, tracking=tracking))


def _confirm(target_width: int, *, study: str, storage: Any, offsets: tuple[float, ...],
             tolerance: float, on_run: Callable[[ConfirmationRun], None] | None,
             launcher: Launcher, precision: Precision | None, model: str | None,
             tracking: Tracking | None) -> Confirmation:
    """:func:`confirm` in the process that records the runs."""
    import optuna

    from hptransfer.data.corpus import check_hash, load_corpus
    from hptransfer.models.registry import family_of
    from hptransfer.study.config import check_roles
    from hptransfer.study.leases import lease_timing
    from hptransfer.study.lifecycle import reclaim_lost
    from hptransfer.study.search import quiet_optuna
    from hptransfer.transfer import predict_hparams

    quiet_optuna()
    lease_timing()  # a bad HPTRANSFER_GRACE_S is refused before anything runs
    tracking = ready(tracking if tracking is not None else resolve())
    prediction = predict_hparams(target_width, study=study, storage=storage, model=model)
    url = _storage_url(storage)
    storage = open_storage_arg(storage, Access.UPDATE)
    launcher = _with_owner(launcher, storage, url, confirmation_study_name(study, target_width))
    try:
        config = load_config(study, storage)
    except StudyError as error:
        raise PredictionError(str(error)) from None
    corpus = load_corpus(config.data)
    check_hash(corpus, config.corpus_hash)
    check_roles(study, config)
    predicted = prediction.hparams
    spec = prediction.spec
    if precision is not None and precision is not spec.precision:
        spec = type(spec).model_validate({**spec.model_dump(), "precision": precision})
    target = family_of(spec)
    target.check(spec)  # a target the family cannot build fails here, not 5 times
    launcher = launcher.check(spec, predicted, url)  # before any run
    processes = launcher.processes if url is not None and "memory" not in url else 1
    runs_study = optuna.create_study(
        study_name=confirmation_study_name(study, target_width), storage=storage,
        direction="minimize", load_if_exists=True)
    write_plan(runs_study, json.dumps(
        {"study": study, "target_width": target_width, "hparams": predicted.model_dump_json(),
         "offsets": list(offsets), "tolerance": tolerance,
         "spec": spec.model_dump_json(),
         "noise": (prediction.evidence.seed_noise.shape
                   if prediction.evidence.seed_noise is not None else None)}))
    write_placement(runs_study, {"workers": processes, "threads": launcher.threads,
                                 "auto": launcher.auto})
    reclaim_lost(runs_study, lease_timing())
    # runs that errored in an earlier call are retried, once per call (an error that is
    # the run's own would only repeat within one call)
    retry = {r.offset for r in _runs(runs_study, predicted, offsets)
             if r.status is TrialStatus.ERROR}
    runs = {r.offset: r for r in _runs(runs_study, predicted, offsets)}
    for offset in offsets:  # every missing run at once, so that they can run side by side
        if offset not in runs or offset in retry:
            enqueue(runs_study, {"lr": predicted.lr * 2.0 ** offset},
                    **{Attr.OFFSET: offset, Attr.ROLE: ROLE})
    job = _Job(study=study, predicted=predicted, offsets=offsets, spec=spec,
               config=config, corpus=corpus, launcher=launcher, tracking=tracking)
    helpers = min(processes, waiting_count(runs_study)) - 1
    _train_all(runs_study, job, on_run, [(url, study, target_width, launcher.threads,
                                          launcher.execution.model_dump_json(),
                                          tracking.model_dump_json() if tracking else None)]
               * helpers)
    notes = [f"prediction warning: {w}" for w in prediction.warnings]
    noise = prediction.evidence.seed_noise
    confirmation = summarize(study, target_width, predicted,
                             _runs(runs_study, predicted, offsets), tolerance, notes,
                             noise=noise.shape if noise is not None else None,
                             corpus=config.corpus)  # the study's record: as load_confirmation
    _log_verdict(tracking, confirmation, spec)
    return confirmation


def _log_verdict(tracking: Tracking | None, confirmation: Confirmation, spec) -> None:
    """The verdict as a run of its own in the study's group, beside the runs it judged:
    only this process knows it, once every run has finished (they may have trained in
    other processes, or on other machines)."""
    if tracking is None or not tracking.trackers:
        return
    width = confirmation.target_width
    summary: dict[str, Any] = {"verdict": confirmation.verdict.value,
                               "predicted_lr": confirmation.predicted_lr,
                               "tolerance": confirmation.tolerance}
    for key in ("regret", "best_offset", "noise"):
        if getattr(confirmation, key) is not None:
            summary[key] = getattr(confirmation, key)
    for run in confirmation.runs:  # each run's loss and trial, by its offset (no "+": MLflow
        summary[f"trial/offset {run.offset:g}"] = run.number  # refuses it in a name)
        if run.loss is not None:
            summary[f"val_loss/offset {run.offset:g}"] = run.loss
    log_result(tracking, group=confirmation.study,
               name=f"{confirmation.study} w{width} verdict: {confirmation.verdict.value}",
               slug=f"confirm-w{width}-verdict",
               params={"study": confirmation.study, "role": "verdict", "width": width,
                       "depth": spec.depth, "parametrization": spec.param.value,
                       "predicted_lr": confirmation.predicted_lr},
               summary=summary, status=TrialStatus.COMPLETE.value)


class _Job(NamedTuple):
    """What a process training confirmation runs needs."""

    study: str
    predicted: HParams
    offsets: tuple[float, ...]
    spec: Any
    config: Any
    corpus: Any
    launcher: Launcher
    tracking: Tracking | None = None


def _train_all(runs_study, job: _Job, on_run: Callable[[ConfirmationRun], None] | None,
               helpers: list[tuple]) -> None:
    """Train the waiting runs in this process and in one helper process per item of
    ``helpers`` (:func:`_helper`'s arguments), then wait until every run of the plan has
    finished, runs another process is training included (a second ``confirm`` on the same
    storage): a verdict is only ever given over finished runs. A run whose process dies is
    retried here. Ctrl-C: every process hands its run back for a retry, exit 130."""
    import multiprocessing

    from hptransfer.study.leases import lease_timing
    from hptransfer.study.lifecycle import reclaim_lost

    timing = lease_timing()
    # spawned, not forked: torch and the storage's connections do not survive a fork
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_helper, args=args, daemon=False) for args in helpers]
    for process in processes:
        process.start()
    try:
        while True:
            _work(runs_study, job, on_run)
            reclaim_lost(runs_study, timing)
            pending = [r for r in _runs(runs_study, job.predicted, job.offsets)
                       if r.status in (TrialStatus.RUNNING, TrialStatus.WAITING)]
            if not pending:
                break
            time.sleep(_POLL_S)
    except KeyboardInterrupt:
        _interrupt(processes)
        raise
    finally:
        for process in processes:
            process.join()
    failed = [p.exitcode for p in processes if p.exitcode]
    if failed:
        raise StudyError(f"{len(failed)} helper process(es) training confirmation runs exited "
                         f"with {failed}; the recorded runs are intact: run the same command "
                         f"again to finish")


def _interrupt(processes) -> None:
    """Ctrl-C: each helper hands its run back (exit 130); one that has not within
    ``_STOP_S`` is killed (its run is then retried as its process is gone)."""
    import os
    import signal

    for process in processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGINT)
    deadline = time.monotonic() + _STOP_S
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()


def _work(runs_study, job: _Job, on_run: Callable[[ConfirmationRun], None] | None) -> None:
    """Train waiting confirmation runs until none is left (in this process)."""
    from optuna.trial import TrialState

    offsets, predicted = job.offsets, job.predicted
    low, high = predicted.lr * 2.0 ** offsets[0], predicted.lr * 2.0 ** offsets[-1]
    while (trial := claim_waiting(runs_study)) is not None:
        lr = trial.suggest_float("lr", low, high, log=True)
        offset = _offset_of(lr, predicted.lr, offsets)
        if offset not in offsets:  # a waiting trial of an earlier prediction: retire it
            write_status(runs_study._storage, trial._trial_id, TrialStatus.ERROR,
                         "enqueued for an earlier prediction; not run")
            runs_study.tell(trial, state=TrialState.FAIL)
            continue
        hparams = HParams(**{**predicted.model_dump(), "lr": lr})
        attrs = ((Attr.OFFSET, offset), (Attr.PREDICTED_LR, predicted.lr), (Attr.ROLE, ROLE))
        _run_one(runs_study, trial, hparams, attrs, job)
        if on_run is not None:
            on_run(next(r for r in _runs(runs_study, predicted, offsets)
                        if r.offset == offset))


def _helper(url: str, study: str, target_width: int, threads: int, execution: str,
            tracking: str | None) -> None:
    """A second process training the waiting runs of a confirmation (``workers`` > 1).
    Ctrl-C reaches it once, forwarded by the process that started it (a session of its own:
    the terminal's signal goes to the foreground group only), and ends it quietly with 130."""
    import os

    os.setsid()
    try:
        _help(url, study, target_width, threads, execution, tracking)
    except KeyboardInterrupt:
        sys.exit(130)


def _help(url: str, study: str, target_width: int, threads: int, execution: str,
          tracking: str | None) -> None:
    import optuna

    from hptransfer.data.corpus import load_corpus
    from hptransfer.spec import ModelSpec
    from hptransfer.study.search import quiet_optuna
    from hptransfer.study.storage import open_storage

    quiet_optuna()
    storage = open_storage(url, Access.UPDATE)
    runs_study = optuna.load_study(study_name=confirmation_study_name(study, target_width),
                                   storage=storage)
    plan = json.loads(read_plan(runs_study))
    config = load_config(study, storage)
    job = _Job(study=study, predicted=HParams.model_validate_json(plan["hparams"]),
               offsets=tuple(float(o) for o in plan["offsets"]),
               spec=ModelSpec.model_validate_json(plan["spec"]), config=config,
               corpus=load_corpus(config.data), launcher=LocalLauncher(
                   threads=threads, execution=Execution.model_validate_json(execution)),
               tracking=Tracking.model_validate_json(tracking) if tracking else None)
    _work(runs_study, job, None)


def load_confirmation(study: str, target_width: int, storage: Any = None
                      ) -> Confirmation | None:
    """The recorded confirmation of ``study`` at ``target_width``, judged again from the
    storage (nothing is trained); None when there is none."""
    import optuna

    storage = open_storage_arg(storage)
    name = confirmation_study_name(study, target_width)
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    runs_study = optuna.load_study(study_name=name, storage=storage)
    stored = read_plan(runs_study)
    if stored is None:
        return None
    info = json.loads(stored)
    predicted = HParams.model_validate_json(info["hparams"])
    offsets = [float(o) for o in info["offsets"]]
    try:
        corpus = load_config(study, storage).corpus
    except StudyError:  # the runs outlive their study: judged without bits per byte
        corpus = None
    return summarize(study, target_width, predicted, _runs(runs_study, predicted, offsets),
                      float(info["tolerance"]), noise=info.get("noise"), corpus=corpus)

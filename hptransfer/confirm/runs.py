"""Confirmation runs: train the predicted point and its LR neighbours at the target width.

:func:`confirm` asks :func:`hptransfer.transfer.predict_hparams` for the target's hparams,
then trains the target model at the predicted base LR α and at α·2^offset for each offset
(default −1, −½, 0, +½, +1 octave; every other hparam as predicted), with the study's
budget, seed and corpus. The runs share the seed, so they are paired (same init, same
batches) and a loss difference between two of them is the LR's doing, not the seed's.

Where the runs live: in the study's own storage, as trials of one more Optuna study,
``{study}.confirm.w{width}``, each with the user attributes a tune trial gets (width, spec,
hparams, status, reason, final_val_loss, val_curve, flops, wall_time_s, tokens_per_s,
corpus_hash) plus ``offset``, ``predicted_lr`` and ``role = "confirmation"``. That study
matches the ``NAME.w{width}`` pattern of :func:`hptransfer.study.ledger.study_names` (as ``NAME =
{study}.confirm``) but carries no study config, which ``study_names`` requires: it is never
listed as a study, and ``load_trials(study)`` reads only the proxy widths. Re-running
:func:`confirm` trains only the offsets that have no finished run for the same prediction.

Where the runs train (``backend``): in this process (:attr:`Backend.LOCAL`), or each as a
Ray Train job of ``workers`` data-parallel workers (:attr:`Backend.RAY`,
:mod:`hptransfer.backends.ray_train`). Either way this process holds the trial's lease and writes
its
record, with the same code (:func:`hptransfer.study.tune.record_inputs`, ``record_outcome``,
``outcome_state``); the attributes ``backend`` and ``workers`` say where it ran, and nothing
that reads the runs looks at them. A data-parallel run trains the same global batch as a
local one, so its losses match up to float rounding.

The verdict (:func:`judge`), with ``regret = (loss at the prediction − best loss) / best
loss`` over the completed runs:

- ``CONFIRMED``: the prediction's regret is at most ``tolerance`` (:data:`TOLERANCE`, 0.5%:
  the SPEC's regret target, and several times the loss difference half an octave of LR
  makes near the optimum of a short proxy bowl, so a prediction inside the flat bottom
  passes);
- ``OPTIMUM HIGHER`` / ``OPTIMUM LOWER``: the best run sits at a positive / negative offset
  and beats the prediction by more than the tolerance. When it is the largest / smallest
  offset tried, the direction is still established (paired runs), but the optimum may lie
  further out: a note says so, and the regret is then a lower bound;
- ``INCONCLUSIVE``: no judgement is possible: the predicted point itself did not complete
  (diverged, failed or still running), or fewer than two runs completed.

>>> runs = [ConfirmationRun(offset=o, lr=2.0**(o - 6), status=TrialStatus.COMPLETE, loss=l)
...         for o, l in [(-1, 3.10), (0, 3.00), (1, 3.05)]]
>>> judge(runs).verdict.value, judge(runs).regret
('CONFIRMED', 0.0)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from enum import Enum
from typing import TYPE_CHECKING, Any, NamedTuple

from hptransfer.backends.cluster import Backend
from hptransfer.hparams import HParams
from hptransfer.spec import FrozenConfig
from hptransfer.study.ledger import StudyError, TrialStatus

if TYPE_CHECKING:
    from hptransfer.backends.ray_train import RayScaling

__all__ = ["Confirmation", "ConfirmationRun", "ConfirmationVerdict", "DEFAULT_OFFSETS",
           "TOLERANCE", "confirm", "confirmation_study_name", "confirmation_widths", "judge",
           "load_confirmation"]

DEFAULT_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # octaves of LR around the prediction
TOLERANCE = 0.005  # relative loss: see the module docstring
ROLE = "confirmation"
CONFIRM_ATTR = "hptransfer_confirmation"  # the prediction the runs confirm (JSON)
_OFFSET_MATCH = 1e-6  # octaves: an lr is at an offset when log2(lr / α) is this close


class ConfirmationVerdict(str, Enum):
    CONFIRMED = "CONFIRMED"
    OPTIMUM_HIGHER = "OPTIMUM HIGHER"
    OPTIMUM_LOWER = "OPTIMUM LOWER"
    INCONCLUSIVE = "INCONCLUSIVE"


class ConfirmationRun(FrozenConfig):
    """One confirmation run: its LR offset (octaves from the prediction) and its result."""

    offset: float
    lr: float
    status: TrialStatus
    loss: float | None = None
    number: int | None = None
    reason: str | None = None


class Confirmation(FrozenConfig):
    """The confirmation of a prediction at ``target_width``; JSON via ``model_dump_json()``."""

    study: str
    target_width: int
    predicted_lr: float
    runs: tuple[ConfirmationRun, ...]
    verdict: ConfirmationVerdict
    regret: float | None = None
    best_offset: float | None = None
    tolerance: float = TOLERANCE
    notes: tuple[str, ...] = ()


class _Judgement(NamedTuple):
    verdict: ConfirmationVerdict
    regret: float | None
    best_offset: float | None
    notes: tuple[str, ...]


def judge(runs: Sequence[ConfirmationRun], tolerance: float = TOLERANCE) -> _Judgement:
    """The verdict, regret, best offset and notes of a list of runs (module docstring)."""
    done = [r for r in runs if r.status is TrialStatus.COMPLETE and r.loss is not None
            and math.isfinite(r.loss)]
    notes = [f"offset {r.offset:+g} {r.status.value}" + (f": {r.reason}" if r.reason else "")
             for r in runs if r not in done]
    at_prediction = next((r for r in done if abs(r.offset) < _OFFSET_MATCH), None)
    if at_prediction is None:
        stated = next((r.status.value for r in runs if abs(r.offset) < _OFFSET_MATCH),
                      "not run")
        notes.append(f"the predicted point did not complete ({stated}): no regret to judge")
        return _Judgement(ConfirmationVerdict.INCONCLUSIVE, None, None, tuple(notes))
    if len(done) < 2:
        notes.append("only the predicted point completed: nothing to compare it with")
        return _Judgement(ConfirmationVerdict.INCONCLUSIVE, None, None, tuple(notes))
    best = min(done, key=lambda r: (r.loss, abs(r.offset)))
    regret = max(0.0, (at_prediction.loss - best.loss) / best.loss)
    if regret <= tolerance:
        return _Judgement(ConfirmationVerdict.CONFIRMED, regret, best.offset, tuple(notes))
    verdict = (ConfirmationVerdict.OPTIMUM_HIGHER if best.offset > 0
               else ConfirmationVerdict.OPTIMUM_LOWER)
    offsets = [r.offset for r in runs]
    if best.offset in (max(offsets), min(offsets)):
        notes.append(f"the best run is at the edge of the offsets ({best.offset:+g} octave): "
                     f"the optimum may lie further out, so the regret is a lower bound; "
                     f"extend --offsets to bracket it")
    return _Judgement(verdict, regret, best.offset, tuple(notes))


def confirmation_study_name(study: str, width: int) -> str:
    return f"{study}.confirm.w{width}"


def confirmation_widths(study: str, storage: Any = None) -> list[int]:
    """Target widths with confirmation runs of ``study`` in ``storage``."""
    from hptransfer.study.ledger import _open

    pattern = re.compile(rf"^{re.escape(study)}\.confirm\.w(\d+)$")
    return sorted(int(m[1]) for s in _open(storage).get_all_studies()
                  if (m := pattern.match(s.study_name)) and CONFIRM_ATTR in s.user_attrs)


def _offset_of(lr: float, predicted: float, offsets: Sequence[float]) -> float:
    exact = math.log2(lr / predicted)
    return next((o for o in offsets if abs(o - exact) < _OFFSET_MATCH), round(exact, 6))


def _runs(optuna_study, predicted: HParams, offsets: Sequence[float] | None
          ) -> list[ConfirmationRun]:
    """One run per offset (``offsets`` None: every offset recorded) for this prediction: the
    finished one if any, else the running or waiting one. Lost runs are skipped (retried)."""
    from optuna.trial import TrialState

    from hptransfer.study.ledger import _record

    name = optuna_study.study_name
    found: dict[float, ConfirmationRun] = {}
    for trial in optuna_study.get_trials(deepcopy=False):
        lr = trial.params.get("lr")
        if lr is None or trial.user_attrs.get("status") == TrialStatus.LOST.value:
            continue
        stored = trial.user_attrs.get("hparams")
        if stored is not None:
            expected = HParams(**{**predicted.model_dump(), "lr": lr})
            if HParams.model_validate_json(stored) != expected:
                continue  # a run of an earlier prediction
        elif trial.state is not TrialState.WAITING:
            continue
        offset = _offset_of(lr, predicted.lr, offsets or [])
        if offsets is not None and offset not in offsets:
            continue
        record = _record(name, trial)
        run = ConfirmationRun(offset=offset, lr=lr, status=record.status,
                              loss=record.final_val_loss, number=trial.number,
                              reason=record.reason)
        previous = found.get(offset)
        if previous is None or not _is_finished(previous) or _is_finished(run):
            found[offset] = run
    return [found[o] for o in sorted(found)]


def _is_finished(run: ConfirmationRun) -> bool:
    return run.status not in (TrialStatus.RUNNING, TrialStatus.WAITING)


def _summarize(study: str, width: int, predicted: HParams, runs: list[ConfirmationRun],
               tolerance: float, extra_notes: Sequence[str] = ()) -> Confirmation:
    judgement = judge(runs, tolerance)
    return Confirmation(study=study, target_width=width, predicted_lr=predicted.lr,
                        runs=tuple(runs), verdict=judgement.verdict, regret=judgement.regret,
                        best_offset=judgement.best_offset, tolerance=tolerance,
                        notes=(*extra_notes, *judgement.notes))


class _Placement(NamedTuple):
    """Where confirmation runs train: this process, or Ray Train jobs (``ray`` not None)."""

    threads: int  # local: torch threads; Ray: each worker's (= its CPUs)
    ray: RayScaling | None = None
    address: str | None = None

    @property
    def attrs(self) -> tuple[tuple[str, Any], ...]:
        if self.ray is None:
            return (("backend", Backend.LOCAL.value), ("workers", 1))
        return (("backend", Backend.RAY.value), ("workers", self.ray.workers))


def _run_one(optuna_study, trial, hparams: HParams, attrs: tuple[tuple[str, Any], ...], spec,
             config, corpus, placement: _Placement) -> None:
    """Train one confirmation run and record it like a tune trial (no pruning)."""
    from hptransfer.study.tune import record_run

    attrs = (*attrs, *placement.attrs)
    if placement.ray is None:
        record_run(optuna_study, trial, spec=spec, hparams=hparams, config=config,
                   corpus=corpus, threads=placement.threads, attrs=attrs)
        return
    _record_ray_run(optuna_study, trial, hparams, attrs, spec, config, corpus, placement)


def _record_ray_run(optuna_study, trial, hparams: HParams, attrs: tuple[tuple[str, Any], ...],
                    spec, config, corpus, placement: _Placement) -> None:
    """:func:`hptransfer.study.tune.record_run` with the training done by a Ray Train job."""
    from hptransfer.backends.ray_train import RayRun, train_on_ray
    from hptransfer.study.tune import record_run

    run = RayRun(spec=spec, hparams=hparams, budget=config.budget, seed=config.seed,
                 data=config.data, corpus_hash=config.corpus_hash)
    record_run(optuna_study, trial, spec=spec, hparams=hparams, config=config, corpus=corpus,
               threads=placement.threads, attrs=attrs,
               trainer=lambda: train_on_ray(run, scaling=placement.ray,
                                            address=placement.address,
                                            name=f"{optuna_study.study_name}.t{trial.number}"))


def _placement(backend: Backend, *, threads: int | None, workers: int, address: str | None,
               cpus_per_worker: int) -> _Placement:
    """Check the backend options against each other (before anything runs)."""
    from hptransfer.train.loop import resolve_threads

    if workers < 1 or cpus_per_worker < 1:
        raise ValueError(f"workers and cpus_per_worker must be at least 1, got {workers} and "
                         f"{cpus_per_worker}")
    if backend is Backend.LOCAL:
        if workers > 1:
            raise ValueError(f"{workers} workers train each run data parallel on a Ray "
                             f"cluster: add --backend ray (backend=Backend.RAY); a local run "
                             f"uses one process with --threads threads")
        if address is not None or cpus_per_worker != 1:
            raise ValueError("--address and --cpus-per-worker apply only with --backend ray")
        return _Placement(threads=resolve_threads(threads))
    from hptransfer.backends.cluster import require_ray
    from hptransfer.backends.ray_train import RayScaling

    require_ray()  # the install line before anything else happens
    if threads is not None:
        raise ValueError("--threads sets a local run's threads; on Ray each worker trains "
                         "with --cpus-per-worker threads")
    return _Placement(threads=cpus_per_worker, address=address,
                      ray=RayScaling(workers=workers, cpus_per_worker=cpus_per_worker))


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
            backend: Backend = Backend.LOCAL, workers: int = 1, address: str | None = None,
            cpus_per_worker: int = 1) -> Confirmation:
    """Train the prediction for ``target_width`` and its LR neighbours α·2^offset, record
    them in ``storage`` and judge the prediction (module docstring).

    ``storage`` is an Optuna storage or URL (None: ``$HPTRANSFER_HOME/studies.db``). Runs
    already finished for the same prediction are not trained again. ``on_run`` is called
    after each new run. Raises :class:`hptransfer.transfer.PredictionError` when the study
    cannot support a prediction, :class:`hptransfer.study.ledger.StudyError` when its corpus
    changed (or, with ``backend=Backend.RAY``, when Ray is missing or the storage is a file
    that a multi-node cluster cannot share), ValueError for options that do not fit together.

    ``backend=Backend.RAY`` trains each run as a Ray Train job on the cluster at ``address``
    (:func:`hptransfer.backends.cluster.connect`) with ``workers`` data-parallel workers of
    ``cpus_per_worker`` CPUs (and threads) each; the predicted batch size must be divisible
    by ``workers``. ``threads`` is for local runs only.
    """
    import optuna
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from hptransfer.data.corpus import load_corpus
    from hptransfer.study.ledger import load_config
    from hptransfer.study.storage import open_storage
    from hptransfer.study.tune import quiet_optuna, reclaim_lost
    from hptransfer.transfer import PredictionError, predict_hparams

    offsets = tuple(sorted({float(o) for o in offsets}))
    if 0.0 not in offsets:
        raise ValueError(f"offsets must include 0 (the predicted point), got {list(offsets)}")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance is a relative loss in (0, 1), got {tolerance}")
    placement = _placement(backend, threads=threads, workers=workers, address=address,
                           cpus_per_worker=cpus_per_worker)
    quiet_optuna()
    prediction = predict_hparams(target_width, study=study, storage=storage)
    url = _storage_url(storage) if placement.ray is not None else None
    storage = open_storage(storage) if storage is None or isinstance(storage, str) else storage
    try:
        config = load_config(study, storage)
    except StudyError as error:
        raise PredictionError(str(error)) from None
    corpus = load_corpus(config.data)
    if corpus.content_hash != config.corpus_hash:
        raise StudyError(f"the corpus {config.data or '(built-in)'} now hashes to "
                         f"{corpus.content_hash}, but study {study!r} was tuned on "
                         f"{config.corpus_hash}; restore the data the study was tuned on")
    predicted = prediction.hparams
    if placement.ray is not None:
        from hptransfer.backends.cluster import check_shared_storage, connect
        from hptransfer.train.loop import rows_per_worker

        rows_per_worker(predicted.batch_size, workers)  # before any run is created
        connect(address)
        if url is not None:
            check_shared_storage(url, address)
    runs_study = optuna.create_study(
        study_name=confirmation_study_name(study, target_width), storage=storage,
        direction="minimize", load_if_exists=True)
    runs_study.set_user_attr(CONFIRM_ATTR, json.dumps(
        {"study": study, "target_width": target_width, "hparams": predicted.model_dump_json(),
         "offsets": list(offsets), "tolerance": tolerance}))
    reclaim_lost(runs_study)
    low, high = predicted.lr * 2.0 ** offsets[0], predicted.lr * 2.0 ** offsets[-1]
    distribution = FloatDistribution(low, high, log=True)
    while True:
        runs = {r.offset: r for r in _runs(runs_study, predicted, offsets)}
        pending = [o for o in offsets if o not in runs]
        waiting = [o for o, r in runs.items() if r.status is TrialStatus.WAITING]
        if not pending and not waiting:
            break
        if not waiting:  # enqueue the next offset; ask() pops the oldest waiting trial
            offset = pending[0]
            runs_study.enqueue_trial({"lr": predicted.lr * 2.0 ** offset},
                                     user_attrs={"offset": offset, "role": ROLE})
        trial = runs_study.ask()
        lr = trial.suggest_float("lr", distribution.low, distribution.high, log=True)
        offset = _offset_of(lr, predicted.lr, offsets)
        if offset not in offsets:  # a waiting trial of an earlier prediction: retire it
            trial.set_user_attr("status", TrialStatus.ERROR.value)
            trial.set_user_attr("reason", "enqueued for an earlier prediction; not run")
            runs_study.tell(trial, state=TrialState.FAIL)
            continue
        hparams = HParams(**{**predicted.model_dump(), "lr": lr})
        attrs = (("offset", offset), ("predicted_lr", predicted.lr), ("role", ROLE))
        _run_one(runs_study, trial, hparams, attrs, prediction.spec, config, corpus, placement)
        if on_run is not None:
            on_run(next(r for r in _runs(runs_study, predicted, offsets)
                        if r.offset == offset))
    notes = [f"prediction warning: {w}" for w in prediction.warnings]
    return _summarize(study, target_width, predicted, _runs(runs_study, predicted, offsets),
                      tolerance, notes)


def load_confirmation(study: str, target_width: int, storage: Any = None
                      ) -> Confirmation | None:
    """The recorded confirmation of ``study`` at ``target_width``, judged again from the
    storage (nothing is trained); None when there is none."""
    import optuna

    from hptransfer.study.ledger import _open

    storage = _open(storage)
    name = confirmation_study_name(study, target_width)
    if name not in {s.study_name for s in storage.get_all_studies()}:
        return None
    runs_study = optuna.load_study(study_name=name, storage=storage)
    stored = runs_study.user_attrs.get(CONFIRM_ATTR)
    if stored is None:
        return None
    info = json.loads(stored)
    predicted = HParams.model_validate_json(info["hparams"])
    offsets = [float(o) for o in info["offsets"]]
    return _summarize(study, target_width, predicted, _runs(runs_study, predicted, offsets),
                      float(info["tolerance"]))

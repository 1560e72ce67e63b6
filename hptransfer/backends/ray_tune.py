"""Tune trials on a Ray cluster: Ray Tune runs them, Optuna chooses them, the lifecycle records.

:class:`RayTune` is a :class:`~hptransfer.study.tune.TrialRunner`: ``tune(config,
runner=RayTune(RayOptions(...)))`` (``hptransfer tune --backend ray``) runs the same study as
the local runner through Ray Tune's ``Tuner``. Ray places each trial with its resources
(CPUs, a fraction of a GPU so that tiny proxies share a card), retries a trial whose worker
died (``FailureConfig``) and can stop poor trials with ASHA. The searcher is Ray's
``OptunaSearch`` on the width's own Optuna study and sampler, so every trial is an Optuna
trial of ``NAME.wW`` exactly as a local worker makes it.

Who writes what: the **driver** (this process) asks Optuna for the trial, holds its lease
(Ray, not hptransfer, retries a dead Ray worker, so the lease must outlive the worker) and
tells Optuna the final state; the **Ray worker** (:func:`_train_trial`) writes what it
trains, trains with :func:`hptransfer.training.loop.train` reporting each validation point to
Ray (for ASHA), to Optuna (the curve) and to the experiment trackers asked for
(:mod:`hptransfer.tracking`), and writes the outcome. A killed worker is
restarted by Ray with the same Optuna trial, up to ``max_failures`` times; a killed driver's
leases lapse and the same command run again reclaims them. ASHA, like the local pruners,
never stops a trial before half its token budget (docs/spec.md §8).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import warnings
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.backends import Backend
from hptransfer.backends.cluster import check_shared_storage, connect, require_ray
from hptransfer.errors import StudyError
from hptransfer.spec import FrozenConfig
from hptransfer.study.attributes import mark_ladder_done
from hptransfer.study.config import StudyConfig
from hptransfer.study.lifecycle import enqueue, write_status
from hptransfer.study.records import finished_count, records_of, running_count, waiting_count
from hptransfer.study.schema import Attr, TrialStatus, recorded_state, trial_record
from hptransfer.study.search import Pruning, SamplerKind, make_sampler

if TYPE_CHECKING:
    from hptransfer.study.runner import WidthJob

__all__ = ["RayOptions", "RayTune", "Scheduler"]

METRIC = "val_loss"


class Scheduler(str, Enum):
    """Ray Tune's trial scheduler."""

    FIFO = "fifo"  # every trial runs its whole budget
    ASHA = "asha"  # asynchronous successive halving, never before half the budget


class RayOptions(FrozenConfig):
    """How trials run on Ray (``hptransfer tune --backend ray``)."""

    address: str | None = Field(None, description="Ray address; None: a running cluster, "
                                                  "else a local one")
    cpus_per_trial: int = Field(1, ge=1, description="CPUs (and training threads) per trial")
    gpus_per_trial: float = Field(0.0, ge=0.0, le=8.0,
                                  description="GPUs per trial; a fraction shares a card")
    concurrent: int | None = Field(None, ge=1, description="trials at once; None: as many "
                                                           "as the resources allow")
    scheduler: Scheduler = Scheduler.FIFO
    max_failures: int = Field(2, ge=0, description="retries of a trial whose worker died")


def _hparams_of(config: StudyConfig, params: dict[str, Any]):
    """The HParams an Optuna trial's params stand for (the inverse of SearchSpace.suggest)."""
    import optuna

    return config.space.suggest(optuna.trial.FixedTrial(params))


def _train_trial(ray_config: dict[str, Any], *, job: dict[str, Any]) -> None:
    """One trial, in a Ray worker: train it and record it into the Optuna trial (module
    docstring). Exceptions are recorded, not raised: a deterministic error would only fail
    again on every retry."""
    from optuna.exceptions import UpdateFinishedTrialError
    from ray import tune as ray_tune

    from hptransfer.data.corpus import check_hash, load_corpus
    from hptransfer.record import CurvePoint, Verdict
    from hptransfer.study.config import check_roles
    from hptransfer.study.leases import record_worker
    from hptransfer.study.lifecycle import trial_seed, write_inputs, write_outcome
    from hptransfer.study.schema import TrialStatus
    from hptransfer.study.storage import Access, open_storage
    from hptransfer.study.trial import run_info
    from hptransfer.tracking import RunLog, Tracking
    from hptransfer.training.loop import train

    config = StudyConfig.model_validate_json(job["config"])
    storage = open_storage(job["storage"], Access.UPDATE)
    trial_id = ray_config["optuna_trial_id"]
    params = {k: v for k, v in ray_config.items() if k != "optuna_trial_id"}
    record_worker(storage, trial_id)
    spec, hparams = config.spec_at(job["width"]), _hparams_of(config, params)
    attrs = storage.get_trial_user_attrs(trial_id)
    seed = trial_seed(attrs, config)
    # this worker trains the trial, so it logs it (the driver only asks and tells)
    tracking = Tracking.model_validate_json(job["tracking"]) if job["tracking"] else None
    log = RunLog(tracking, run_info(job["study"], storage.get_trial(trial_id).number,
                                    spec=spec, hparams=hparams, seed=seed, attrs=attrs))

    def on_eval(point: CurvePoint) -> Verdict:
        log.point(point)
        try:
            storage.set_trial_intermediate_value(trial_id, point.tokens, point.loss)
        except UpdateFinishedTrialError:  # taken over (the driver's lease lapsed): stop
            return Verdict.STOP
        ray_tune.report({METRIC: point.loss, "tokens": point.tokens, "final": False})
        return Verdict.CONTINUE

    try:
        # a missing or different corpus on this node is recorded as the trial's error (a
        # retry on the same node would fail the same way)
        corpus = load_corpus(config.data)
        write_inputs(storage, trial_id, spec=spec, hparams=hparams,
                     corpus_hash=corpus.content_hash, threads=job["threads"], seed=seed,
                     attrs=((Attr.BACKEND, Backend.RAY.value),))
        check_hash(corpus, config.corpus_hash)
        check_roles(job["name"], config)
        outcome = train(spec, hparams, config.budget, corpus, seed=seed,
                        on_eval=on_eval, threads=job["threads"], device=job["device"])
    except Exception as error:
        outcome = error
    try:
        status = write_outcome(storage, trial_id, outcome).value
    except UpdateFinishedTrialError:
        status = TrialStatus.LOST.value  # taken over: the driver says so, its retry records
    record = outcome if not isinstance(outcome, Exception) else None
    log.finish(status, record, None if record is not None else f"{type(outcome).__name__}: "
                                                              f"{outcome}")
    loss = getattr(outcome, "final_val_loss", None)
    ray_tune.report({METRIC: math.inf if loss is None else loss, "final": True,
                     "tokens": getattr(outcome, "tokens_seen", 0)})


def _searcher(job: WidthJob, sampler):
    """Ray's OptunaSearch on the width's study: it asks and tells; the lease and the final
    state are ours (module docstring)."""
    from optuna.trial import TrialState
    from ray.tune.search.optuna import OptunaSearch

    from hptransfer.study.leases import Heartbeat, LeaseWarning
    from hptransfer.study.lifecycle import TakenOver

    study, config = job.study, job.config

    def space(trial) -> None:  # define-by-run: the captor records every suggest_* call
        config.space.suggest(trial)

    class RecordingSearch(OptunaSearch):
        def __init__(self, on_trial) -> None:
            super().__init__(space=space, metric=METRIC, mode="min", sampler=sampler,
                             study_name=study.study_name, storage=study._storage)
            self._leases: dict[str, Heartbeat] = {}
            self._on_trial = on_trial

        def __getstate__(self) -> dict:
            # Ray pickles the searcher with the experiment; the lease threads and the
            # caller's callback (a progress bar, holding locks) stay in this process
            return {k: v for k, v in self.__dict__.items()
                    if k not in ("_leases", "_on_trial")}

        def __setstate__(self, state: dict) -> None:
            self.__dict__.update(state, _leases={}, _on_trial=None)

        def suggest(self, trial_id: str) -> dict | None:
            params = super().suggest(trial_id)
            if params is None:
                return None
            ot_trial = self._ot_trials[trial_id]
            self._leases[trial_id] = Heartbeat(study._storage, ot_trial._trial_id)
            return {**params, "optuna_trial_id": ot_trial._trial_id}

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            pass  # the worker reports each point to Optuna itself, at tokens seen

        def on_trial_complete(self, trial_id: str, result: dict | None = None,
                              error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            ot_trial = self._ot_trials[trial_id]
            storage, tid = study._storage, ot_trial._trial_id
            lease = self._leases.pop(trial_id, None)
            try:
                told = self._tell(ot_trial, result, error, trial_id)
            finally:
                if lease is not None:
                    lease.stop()
                self._completed_trials.add(trial_id)
            if told and self._on_trial is not None:
                self._on_trial(trial_record(study.study_name, storage.get_trial(tid)))

        def _tell(self, ot_trial, result: dict | None, error: bool, trial_id: str) -> bool:
            """Tell the state the worker recorded (or the error, or ASHA's stop); False
            when another worker took the trial over meanwhile: its run is superseded."""
            from optuna.exceptions import UpdateFinishedTrialError

            storage, tid = study._storage, ot_trial._trial_id
            try:
                recorded = recorded_state(storage.get_trial(tid))
                if result and result.get("final") and recorded is not None:
                    state, value = recorded
                elif error:
                    write_status(storage, tid, TrialStatus.ERROR,
                                 f"the Ray trial failed after its retries (see the Ray logs "
                                 f"of trial {trial_id})")
                    state, value = TrialState.FAIL, None
                else:  # stopped by the scheduler (ASHA) before its budget ran out
                    tokens = (result or {}).get("tokens")
                    write_status(storage, tid, TrialStatus.PRUNED,
                                 f"stopped by ASHA at {tokens} tokens")
                    state, value = TrialState.PRUNED, None
                self._ot_study.tell(ot_trial, value, state=state)
            except (UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL"
                if storage.get_trial(tid).state is TrialState.RUNNING:
                    raise
                warnings.warn(str(TakenOver(study.study_name, ot_trial.number)),
                              LeaseWarning, stacklevel=1)
                return False
            return True

        # Ray checkpoints its experiment by pickling the searcher (storage engine, lease
        # threads). Not needed: the Optuna storage is the record, and a re-run resumes from it.
        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            pass

        def stop_leases(self) -> None:
            for lease in self._leases.values():
                lease.stop()
            self._leases.clear()

    # on_trial goes in as an argument, not a closure: cloudpickle pickles this class by
    # value, closures included, and __getstate__ leaves the callback behind
    return RecordingSearch(job.on_trial)


class RayTune:
    """A tune's trials as Ray Tune trials on the cluster of ``options.address``."""

    def __init__(self, options: RayOptions | None = None) -> None:
        self.options = options or RayOptions()

    def prepare(self, storage_url: str, pruning: Pruning, sampler: SamplerKind) -> None:
        require_ray()
        if pruning is not Pruning.NONE:
            raise StudyError("--pruner applies to local workers; on Ray use --scheduler "
                             "asha (it also never stops a trial before half its budget)")
        if sampler is SamplerKind.LADDER and self.options.scheduler is not Scheduler.FIFO:
            raise StudyError("--scheduler asha stops trials early, and each of the ladder's "
                             "few trials is needed whole: use --scheduler fifo, or an Optuna "
                             "--sampler")
        connect(self.options.address)
        check_shared_storage(storage_url, self.options.address)
        if self.options.gpus_per_trial > 0:  # else Ray would queue the trials forever
            from hptransfer.backends.ray_train import check_gpus

            check_gpus(1, self.options.gpus_per_trial, self.options.address,
                       flag="--gpus-per-trial")

    def run_width(self, job: WidthJob) -> None:
        """Run trials of one width on Ray: until the study holds ``job.trials`` finished, or
        with the ladder, round by round until its planner says the width is done (this
        driver plans; each round's trials run on the cluster side by side)."""
        from hptransfer.study.leases import PlannerLease
        from hptransfer.study.lifecycle import reclaim_lost

        if job.ladder is None:
            reclaim_lost(job.study)
            missing = job.trials - finished_count(job.study) - running_count(job.study)
            if missing > 0:
                self._fit(job, missing)
            return
        lease = PlannerLease(job.study)
        try:
            while True:
                reclaim_lost(job.study)
                waiting = waiting_count(job.study)
                if not waiting:
                    rows = records_of(job.study)
                    plan = job.ladder.plan(rows)
                    if plan.done is not None:
                        mark_ladder_done(job.study, plan.done)
                        return
                    for point in plan.points:
                        enqueue(job.study, point.params(job.config),
                                **{Attr.SEED: point.seed, Attr.LADDER: point.step.value})
                    waiting = len(plan.points)
                # Ray's OptunaSearch asks the study, which hands out the waiting trials
                self._fit(job, waiting)
        finally:
            lease.stop()

    def _fit(self, job: WidthJob, samples: int) -> None:
        """One Ray Tune experiment of ``samples`` trials of the width's study."""
        from ray import tune as ray_tune

        from hptransfer.study.storage import home

        options, config = self.options, job.config
        tokens = config.tokens_per_trial()
        scheduler = None
        if options.scheduler is Scheduler.ASHA:
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(time_attr="tokens", max_t=tokens,
                                      grace_period=max(1, tokens // 2), reduction_factor=2)
        searcher = _searcher(job, make_sampler(job.sampler, config, config.seed + job.width))
        # Ray gives a trial with a GPU share its own CUDA_VISIBLE_DEVICES: "cuda" is that card
        worker_job = {"config": config.model_dump_json(), "storage": job.storage_url,
                      "name": job.name, "width": job.width, "threads": options.cpus_per_trial,
                      "study": job.study.study_name,
                      "tracking": job.tracking.model_dump_json() if job.tracking else None,
                      "device": "cuda" if options.gpus_per_trial > 0 else None}
        trainable = ray_tune.with_resources(
            ray_tune.with_parameters(_train_trial, job=worker_job),
            {"cpu": options.cpus_per_trial, "gpu": options.gpus_per_trial})
        tuner = ray_tune.Tuner(
            trainable,
            tune_config=ray_tune.TuneConfig(
                search_alg=searcher, scheduler=scheduler, metric=METRIC, mode="min",
                num_samples=samples, max_concurrent_trials=options.concurrent),
            run_config=ray_tune.RunConfig(
                # a ladder runs one experiment per round, often several a second
                name=f"{job.name}.w{job.width}-{time.strftime('%Y%m%d-%H%M%S')}-"
                     f"{len(job.study.get_trials(deepcopy=False))}",
                storage_path=str(home() / "ray"), verbose=0,
                failure_config=ray_tune.FailureConfig(max_failures=options.max_failures)))
        try:
            # Ray Tune prints its experiment header on stdout; keep stdout for hptransfer's
            # own output (--json must stay parseable)
            with contextlib.redirect_stdout(sys.stderr):
                tuner.fit()
        finally:
            searcher.stop_leases()

"""Tuning proxies with Optuna: the worker loop, leases, samplers and pruners.

A worker runs trials of one width until the study holds ``trials`` finished ones:
ask → :meth:`SearchSpace.suggest` → :func:`hptransfer.train.loop.train` → tell. The storage
is the only shared state, so workers may be threads of no one: processes on one machine or
on many, started by ``hptransfer tune --workers N`` or ``hptransfer worker``.

Leases (why not Optuna's heartbeat): Optuna's heartbeat works only inside ``study.optimize``
on an RDB storage; hptransfer uses ask/tell and also supports JournalStorage. So each running
trial records its host and pid and a heartbeat time (system attributes, refreshed by a
thread every ``HEARTBEAT_S`` seconds). A RUNNING trial is *lost* when its process is gone
(same host) or its heartbeat is older than ``GRACE_S`` (any host). A lost trial is marked
FAIL with status ``lost`` and its exact parameters are enqueued again, once: marking FAIL
is a compare-and-set in the storage, so only one worker wins the retry.

Every trial of a width uses the study's seed (same init, same batches): LRs are compared on
paired runs, which makes the loss-vs-LR bowl far smoother than independent seeds would.

Pruning and the LR optimum (SPEC §8): every trial runs its own full schedule, and a pruner
compares a trial's validation loss at step s with other trials' losses at the same step s of
the same budget. Early in a schedule, large LRs look better than they end, so pruning on
early steps biases the optimum upward. hptransfer's pruners therefore never act before half
of the budget has run (``n_warmup_steps`` / ``min_resource``), and pruning is off by default.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum
from typing import Any

from hptransfer.backends.cluster import Backend
from hptransfer.backends.ray_tune import RayOptions
from hptransfer.budget import Budget
from hptransfer.data.corpus import Corpus
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord, Verdict
from hptransfer.space import SearchSpace
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.ledger import (
    CONFIG_ATTR,
    StudyConfig,
    StudyError,
    TrialRecord,
    TrialStatus,
    WidthSummary,
    load_trials,
    summarize,
    width_study_name,
)
from hptransfer.study.storage import storage_kind

__all__ = ["Pruning", "SamplerKind", "TuneResult", "WarmStart", "outcome_state", "record_inputs",
           "record_outcome", "record_run", "run_worker",
           "study_config", "tune", "warm_start_lrs"]

# The built-in CPU proxy setting (docs/tuning.md): 8 trials of width 128 take about 7 minutes
# on 2 cores; the LR range spans the bowl of every width from 32 to 256.
PROXY_SPEC = {"depth": 4, "head_dim": 16, "seq_len": 128, "base_width": 128}
PROXY_HPARAMS = {"batch_size": 16}
PROXY_BUDGET = {"steps": 150, "eval_every": 50}
PROXY_SPACE = {"lr": (2.0**-12, 2.0**-2), "weight_decay": (1e-5, 1e-1),
               "batch_sizes": (8, 16, 32)}
DEFAULT_TRIALS = 8

HEARTBEAT_S = float(os.environ.get("HPTRANSFER_HEARTBEAT_S", 10))
GRACE_S = float(os.environ.get("HPTRANSFER_GRACE_S", 60))
_HOST, _PID, _BEAT = "hptransfer:host", "hptransfer:pid", "hptransfer:heartbeat"


class SamplerKind(str, Enum):
    TPE = "tpe"  # Optuna 5 default: multivariate, constant liar
    GP = "gp"  # Gaussian process with log EI: strong for 2-4 continuous hparams
    CMAES = "cmaes"
    QMC = "qmc"  # quasi-random Sobol points
    GRID = "grid"  # the LR octaves (× batch sizes) only


class Pruning(str, Enum):
    NONE = "none"
    MEDIAN = "median"
    HYPERBAND = "hyperband"


class WarmStart(str, Enum):
    """Trials enqueued before the sampler runs."""

    NONE = "none"
    OCTAVES = "octaves"  # the LR octave grid, so every width has its bowl bracketed
    OCTAVES_AND_PREVIOUS = "octaves+previous"  # also the 3 best points of the previous width


def quiet_optuna() -> None:
    """hptransfer reports progress itself; Optuna's per-trial INFO lines would drown it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(kind: SamplerKind, config: StudyConfig, seed: int):
    import optuna

    if kind is SamplerKind.TPE:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if kind in (SamplerKind.GP, SamplerKind.QMC):
        try:
            import scipy  # noqa: F401  (optuna's GP fit and Sobol points use it)
        except ImportError:
            raise StudyError(f"--sampler {kind.value} needs the scipy package: "
                             "pip install scipy") from None
    if kind is SamplerKind.GP:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    if kind is SamplerKind.CMAES:
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise StudyError("--sampler cmaes needs the cmaes package: "
                             "pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=5)
    if kind is SamplerKind.QMC:
        return optuna.samplers.QMCSampler(seed=seed)
    return _ask_tell_grid_sampler()(grid_space(config), seed=seed)


def grid_space(config: StudyConfig) -> dict[str, list]:
    """The grid of ``--sampler grid``: LR octaves × batch sizes."""
    if config.space.weight_decay is not None:
        raise StudyError("--sampler grid searches LR octaves and batch sizes only; "
                         "turn the weight-decay range off (--weight-decay-range off) or pick "
                         "another sampler")
    grid: dict[str, list] = {"lr": config.space.lr_octaves()}
    if config.space.batch_sizes is not None:
        grid["batch_size"] = list(config.space.batch_sizes)
    return grid


def _grid_size(config: StudyConfig) -> int:
    size = 1
    for values in grid_space(config).values():
        size *= len(values)
    return size


def _ask_tell_grid_sampler():
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """Optuna's GridSampler stops the study from ``after_trial`` once the grid is
        used up, which raises outside ``study.optimize``; hptransfer drives ask/tell and
        caps ``--trials`` at the grid size instead (see :func:`tune`)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGridSampler


def make_pruner(kind: Pruning, tokens: int):
    """Pruners see validation losses reported at *tokens seen*, so trials with different
    batch sizes are compared at equal data."""
    import optuna

    half = max(1, tokens // 2)  # see the module docstring: never judge the first half
    if kind is Pruning.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=half)
    if kind is Pruning.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=half, max_resource=tokens,
                                              reduction_factor=2)
    return optuna.pruners.NopPruner()


# ---- leases ---------------------------------------------------------------------------------

class _Heartbeat:
    """Refreshes a running trial's heartbeat from a daemon thread until stopped."""

    def __init__(self, storage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        storage.set_trial_system_attr(trial_id, _HOST, socket.gethostname())
        storage.set_trial_system_attr(trial_id, _PID, os.getpid())
        storage.set_trial_system_attr(trial_id, _BEAT, time.time())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._storage.set_trial_system_attr(self._trial_id, _BEAT, time.time())
            except Exception:  # the trial finished meanwhile, or the storage blipped
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_lost(trial) -> bool:
    attrs = trial.system_attrs
    beat = attrs.get(_BEAT)
    if beat is None:  # asked, but died before its first heartbeat was written
        beat = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    if attrs.get(_HOST) == socket.gethostname() and _PID in attrs:
        if attrs[_PID] != os.getpid() and not _process_alive(int(attrs[_PID])):
            return True
    return time.time() - beat > GRACE_S


def reclaim_lost(study) -> list[int]:
    """Mark lost RUNNING trials FAIL (status ``lost``) and enqueue each once more."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not _is_lost(trial):
            continue
        storage = study._storage
        try:
            # attributes before the state: Optuna refuses to update a finished trial. The
            # state change is the compare-and-set; a worker that loses it writes nothing more
            storage.set_trial_user_attr(trial._trial_id, "status", TrialStatus.LOST.value)
            storage.set_trial_user_attr(trial._trial_id, "reason",
                                        "worker died or stopped sending heartbeats; retried")
            won = storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except UpdateFinishedTrialError:
            won = False
        if not won:
            continue  # another worker reclaimed it, or it finished after all
        user_attrs = {k: v for k, v in trial.user_attrs.items()
                      if k in ("width", "grid_point")}
        study.enqueue_trial(trial.params, user_attrs={**user_attrs, "retry_of": trial.number},
                            skip_if_exists=False)
        retried.append(trial.number)
    return retried


# ---- the worker ---------------------------------------------------------------------------

def open_width_study(name: str, width: int, config: StudyConfig, storage, *,
                     sampler: SamplerKind, pruning: Pruning, create: bool):
    """Load (or create) the Optuna study of one width; refuse a different config."""
    import optuna

    study_name = width_study_name(name, width)
    kwargs = dict(study_name=study_name, storage=storage,
                  sampler=make_sampler(sampler, config, config.seed + width),
                  pruner=make_pruner(pruning, config.tokens_per_trial()))
    if create:
        study = optuna.create_study(direction="minimize", load_if_exists=True, **kwargs)
    else:
        study = optuna.load_study(**kwargs)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        study.set_user_attr(CONFIG_ATTR, config.model_dump_json())
    else:
        _refuse_different(name, StudyConfig.model_validate_json(stored), config)
    return study


def finished_count(study) -> int:
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state.is_finished() and t.user_attrs.get("status") != TrialStatus.LOST)


def running_count(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))


def warm_start_lrs(config: StudyConfig) -> list[float]:
    """The LR grid two octaves apart, centre of the range first, then outwards.

    Centre-out so that a study with fewer trials than grid points still brackets the bowl
    (2^-8, 2^-6, 2^-10, 2^-4, … for the default range) instead of running only small LRs.
    """
    octaves = config.space.lr_octaves(step=2)
    if not octaves:
        return []
    middle = (math.log2(octaves[0]) + math.log2(octaves[-1])) / 2
    return sorted(octaves, key=lambda lr: (abs(math.log2(lr) - middle), lr))


def enqueue_warm_start(study, config: StudyConfig, warm: WarmStart,
                       previous: list[TrialRecord]) -> None:
    """Enqueue the LR octave grid (and the previous width's best points), once per study."""
    if warm is WarmStart.NONE or study.user_attrs.get("warm_started"):
        return
    for lr in warm_start_lrs(config):
        study.enqueue_trial(config.space.grid_point(lr), user_attrs={"grid_point": True})
    if warm is WarmStart.OCTAVES_AND_PREVIOUS:
        done = sorted((t for t in previous if t.status is TrialStatus.COMPLETE),
                      key=lambda t: t.final_val_loss)
        for trial in done[:3]:
            params = config.space.grid_point(trial.hparams.lr)
            study.enqueue_trial(params, user_attrs={"from_width": trial.width})
    study.set_user_attr("warm_started", True)


def record_inputs(storage, trial_id: int, *, spec: ModelSpec, hparams: HParams,
                  corpus: Corpus, threads: int, attrs: tuple[tuple[str, Any], ...] = ()) -> None:
    """Write what a trial trains (width, spec, hparams, corpus hash, provenance, ``attrs``)
    into its user attributes, before the run: a lost run still says what it was."""
    from hptransfer.provenance import collect

    for key, value in (("width", spec.width), ("spec", spec.model_dump_json()),
                       ("hparams", hparams.model_dump_json()),
                       ("corpus_hash", corpus.content_hash),
                       ("provenance", collect(threads).model_dump_json()), *attrs):
        storage.set_trial_user_attr(trial_id, key, value)


def record_outcome(storage, trial_id: int, outcome: RunRecord | BaseException) -> None:
    """Write what came of a run (status, reason, losses, curve, cost), or the exception that
    ended it, into its user attributes. The Optuna state is told separately
    (:func:`outcome_state`): by the worker here, by the Ray driver on a cluster."""
    if isinstance(outcome, BaseException):
        storage.set_trial_user_attr(trial_id, "status", TrialStatus.ERROR.value)
        storage.set_trial_user_attr(trial_id, "reason", f"{type(outcome).__name__}: {outcome}")
        return
    for key, value in (("status", outcome.status.value), ("reason", outcome.reason),
                       ("final_val_loss", outcome.final_val_loss),
                       ("val_curve", json.dumps([p.model_dump() for p in outcome.val_curve])),
                       ("flops", outcome.flops), ("wall_time_s", outcome.wall_time_s),
                       ("tokens_per_s", outcome.tokens_per_s), ("steps", outcome.steps),
                       ("tokens_seen", outcome.tokens_seen)):
        storage.set_trial_user_attr(trial_id, key, value)


def outcome_state(outcome: RunRecord | BaseException):
    """The Optuna state and value of a run: COMPLETE with the final validation loss, PRUNED,
    or FAIL for a diverged run (not a loss; it bounds the stable region) and for an
    exception (recorded, never retried: it would fail again)."""
    if isinstance(outcome, BaseException):
        return state_of(TrialStatus.ERROR.value, None)
    return state_of(outcome.status.value, outcome.final_val_loss)


def state_of(status: str, loss: float | None):
    """The Optuna state and value for a recorded ``status`` attribute (the one mapping, for
    local trials and for the Ray driver, which reads the status its worker recorded)."""
    from optuna.trial import TrialState

    if status == TrialStatus.COMPLETE.value and loss is not None:
        return TrialState.COMPLETE, loss
    if status == TrialStatus.PRUNED.value:
        return TrialState.PRUNED, None
    return TrialState.FAIL, None


def record_run(study, trial, *, spec: ModelSpec, hparams: HParams, config: StudyConfig,
               corpus: Corpus, threads: int, attrs: tuple[tuple[str, Any], ...] = (),
               prune: bool = False,
               trainer: Callable[[], RunRecord] | None = None) -> None:
    """Train ``spec``/``hparams`` as ``trial`` of ``study`` and record it, under a lease.

    The one place a run becomes a trial (tune trials and confirmation runs alike):
    :func:`record_inputs`, the training, :func:`record_outcome`, and the Optuna state of
    :func:`outcome_state`. The training is :func:`hptransfer.train.loop.train` in this
    process, or ``trainer`` when the run is trained elsewhere (a Ray Train job: this process
    still holds the lease while it runs).
    """
    from hptransfer.train.loop import train

    storage = study._storage
    beat = _Heartbeat(storage, trial._trial_id)
    try:
        record_inputs(storage, trial._trial_id, spec=spec, hparams=hparams, corpus=corpus,
                      threads=threads, attrs=attrs)

        def on_eval(point: CurvePoint) -> Verdict:
            trial.report(point.loss, point.tokens)
            return Verdict.STOP if trial.should_prune() else Verdict.CONTINUE

        try:
            outcome = trainer() if trainer is not None else train(
                spec, hparams, config.budget, corpus, seed=config.seed,
                on_eval=on_eval if prune else None, threads=threads)
        except Exception as error:
            outcome = error
        record_outcome(storage, trial._trial_id, outcome)
        state, value = outcome_state(outcome)
        study.tell(trial, value, state=state)
    finally:
        beat.stop()


def _run_trial(study, config: StudyConfig, width: int, corpus: Corpus, threads: int) -> None:
    trial = study.ask()
    record_run(study, trial, spec=config.spec_at(width), hparams=config.space.suggest(trial),
               config=config, corpus=corpus, threads=threads, prune=True)


def run_worker(name: str, width: int, config: StudyConfig, storage, corpus: Corpus, *,
               trials: int, sampler: SamplerKind = SamplerKind.TPE,
               pruning: Pruning = Pruning.NONE, threads: int = 1,
               on_trial: Callable[[TrialRecord], None] | None = None) -> None:
    """Run trials of one width until the study holds ``trials`` finished ones."""
    quiet_optuna()
    study = open_width_study(name, width, config, storage, sampler=sampler, pruning=pruning,
                             create=True)
    _work(study, name, width, config, corpus, trials=trials, threads=threads,
          on_trial=on_trial)


def _work(study, name: str, width: int, config: StudyConfig, corpus: Corpus, *, trials: int,
          threads: int, on_trial: Callable[[TrialRecord], None] | None) -> None:
    storage = study._storage
    while True:
        reclaim_lost(study)
        # count trials other workers are running too, so parallel workers do not overshoot
        if finished_count(study) + running_count(study) >= trials:
            break
        _run_trial(study, config, width, corpus, threads)
        if on_trial is not None:
            last = max(load_trials(name, storage, [width]), key=lambda t: t.number
                       if t.finished else -1)
            on_trial(last)


def study_config(*, spec: ModelSpec | None = None, space: SearchSpace | None = None,
                 budget: Budget | None = None, seed: int = 0, corpus: Corpus | None = None,
                 data: str | None = None) -> StudyConfig:
    """A :class:`StudyConfig`, with the built-in proxy setting for whatever is not given.

    When the batch size is searched and the budget is in steps, the budget becomes the same
    number of *tokens* at the base batch size: batch sizes are compared at equal data.
    """
    from hptransfer.data.corpus import load_corpus

    corpus = corpus if corpus is not None else load_corpus(data)
    spec = spec or ModelSpec(**PROXY_SPEC)
    # The template's width means nothing (each width study sets its own); store it at the
    # base width so that the same study run with other --widths has the same config.
    spec = ModelSpec(**{**spec.model_dump(), "width": spec.base_width,
                        "vocab": max(spec.vocab, corpus.vocab_size)})
    space = space or SearchSpace(**PROXY_SPACE, base=HParams(**PROXY_HPARAMS))
    budget = budget or Budget(**PROXY_BUDGET)
    if space.batch_sizes is not None and budget.steps is not None:
        budget = Budget(**{**budget.model_dump(), "steps": None,
                           "tokens": budget.steps * space.base.batch_size * spec.seq_len})
    return StudyConfig(spec=spec, budget=budget, space=space, seed=seed,
                       corpus_hash=corpus.content_hash, data=data)




# ---- the tune: every width, N workers each ---------------------------------------------------

class TuneResult(FrozenConfig):
    """What ``tune`` leaves behind: where the record is, and each width's summary."""

    study: str
    storage: str
    widths: tuple[WidthSummary, ...]
    wall_time_s: float

    def best(self, width: int) -> WidthSummary:
        for summary in self.widths:
            if summary.width == width:
                return summary
        raise KeyError(f"width {width} is not in study {self.study!r}")


def _check_existing(name: str, config: StudyConfig, storage) -> None:
    """Refuse, before any trial runs, a config that differs from the study's stored one."""
    from hptransfer.study.ledger import load_config, study_names

    if name not in study_names(storage):
        return
    _refuse_different(name, load_config(name, storage), config)


def _refuse_different(name: str, old: StudyConfig, new: StudyConfig) -> None:
    diff = [k for k in StudyConfig.model_fields if getattr(old, k) != getattr(new, k)]
    if diff:
        raise StudyError(
            f"study {name!r} already exists with a different {', '.join(diff)}; resume it "
            f"with the same settings, or start a new one with --study OTHER_NAME")


def _spawn_worker(name: str, width: int, storage_url: str, trials: int, threads: int,
                  sampler: SamplerKind, pruning: Pruning):
    import subprocess
    import sys

    command = [sys.executable, "-m", "hptransfer.cli", "worker", "--study", name,
               "--storage", storage_url, "--width", str(width), "--trials", str(trials),
               "--threads", str(threads), "--sampler", sampler.value, "--pruner",
               pruning.value, "--quiet"]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


def tune(config: StudyConfig | None = None, *, study: str = "proxy",
         widths: tuple[int, ...] = (128,), trials: int = DEFAULT_TRIALS,
         storage: str | None = None,
         sampler: SamplerKind = SamplerKind.TPE, pruning: Pruning = Pruning.NONE,
         workers: int = 1, warm_start: WarmStart = WarmStart.OCTAVES,
         corpus: Corpus | None = None, threads: int | None = None,
         on_trial: Callable[[TrialRecord], None] | None = None,
         backend: Backend = Backend.LOCAL, ray: RayOptions | None = None) -> TuneResult:
    """Tune every width of ``widths`` (in order) until each holds ``trials`` finished trials.

    ``config`` defaults to :func:`study_config` (the built-in proxy setting and corpus).
    Re-running with the same arguments continues the study: finished trials are kept, lost
    ones retried, and only the missing trials run. ``workers`` processes share each width
    (this one plus ``workers - 1`` children), each with cores / workers threads.

    ``backend=Backend.RAY`` runs the trials on a Ray cluster instead
    (:mod:`hptransfer.backends.ray_tune`,
    placed and retried as ``ray`` says); the record in ``storage`` is the same.
    """
    from hptransfer.data.corpus import load_corpus
    from hptransfer.study.storage import normalize, open_storage
    from hptransfer.train.loop import resolve_threads

    quiet_optuna()
    started = time.perf_counter()
    url = normalize(storage)
    if workers > 1 and storage_kind(url) == "sqlite" and ":memory:" in url:
        raise StudyError("an in-memory SQLite storage cannot be shared by workers")
    if config is None:
        config = study_config(corpus=corpus)
    corpus = corpus if corpus is not None else load_corpus(config.data)
    if corpus.content_hash != config.corpus_hash:
        raise StudyError(f"the corpus hash {corpus.content_hash} differs from the study's "
                         f"{config.corpus_hash}; pass the same --data")
    if sampler is SamplerKind.GRID and trials > _grid_size(config):
        raise StudyError(f"--sampler grid has {_grid_size(config)} points (LR octaves × batch "
                         f"sizes); ask for at most that many --trials or widen --lr-range")
    if backend is Backend.RAY and workers > 1:
        raise StudyError("--workers starts local worker processes; on Ray, trials run as "
                         "the cluster's resources allow (limit them with --concurrent)")
    if backend is Backend.RAY:
        from hptransfer.backends.cluster import require_ray

        require_ray()  # before anything is created: the install line, not a half-made study
    optuna_storage = open_storage(url)
    _check_existing(study, config, optuna_storage)
    threads = threads or max(1, resolve_threads() // workers)
    previous: list[TrialRecord] = []
    for width in widths:
        width_study = open_width_study(study, width, config, optuna_storage, sampler=sampler,
                                       pruning=pruning, create=True)
        enqueue_warm_start(width_study, config, warm_start, previous)
        if backend is Backend.RAY:
            from hptransfer.backends.ray_tune import run_width_on_ray

            run_width_on_ray(width_study, study, width, config, url, trials=trials,
                             sampler=sampler, pruning=pruning, options=ray or RayOptions(),
                             on_trial=on_trial)
            previous = load_trials(study, optuna_storage, [width])
            continue
        children = [_spawn_worker(study, width, url, trials, threads, sampler, pruning)
                    for _ in range(workers - 1)]
        try:
            _work(width_study, study, width, config, corpus, trials=trials, threads=threads,
                  on_trial=on_trial)
        finally:
            for child in children:
                child.wait()
        failed = [c.returncode for c in children if c.returncode]
        if failed:
            raise StudyError(f"{len(failed)} worker process(es) exited with {failed}; the "
                             f"study is intact: run the same command again to continue")
        previous = load_trials(study, optuna_storage, [width])
    summaries = summarize(load_trials(study, optuna_storage, list(widths)))
    return TuneResult(study=study, storage=url, widths=tuple(summaries),
                      wall_time_s=time.perf_counter() - started)

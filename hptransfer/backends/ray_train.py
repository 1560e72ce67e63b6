"""One training run as a Ray Train job: N data-parallel workers, one :class:`RunRecord`.

:func:`train_on_ray` submits :func:`hptransfer.training.loop.train` through
``ray.train.torch.TorchTrainer``: Ray places the N workers, sets up their process group
(gloo, or NCCL on GPUs) and can restart the job after a worker dies (``max_failures``); the
loop turns data parallel when it finds the process group (:mod:`hptransfer.training.ranks`),
so the record is
the one a local run returns, up to float rounding. The workers get a
:class:`~hptransfer.training.order.RunOrder` (spec, hparams, budget, seed, execution by
value, the corpus by path). The caller records the run; rank 0 writes only the validation
curve's points, as the Optuna trial's intermediate values while it trains (``progress``),
so ``hptransfer status`` and optuna-dashboard show a long run as it goes, and logs the run
to the experiment trackers asked for (``tracked``: rank 0 is the process that trains it).

With ``gpus_per_worker`` > 0 each worker gets that share of a GPU (Ray pins it with
``CUDA_VISIBLE_DEVICES``), trains on ``ray.train.torch.get_device()``, and the process group
is NCCL; a cluster without that many GPUs is refused before submitting (Ray would wait for
them forever). Otherwise the workers train on the CPU over gloo.

How the record comes back: Ray Train V2 (the default in recent Ray) hands rank 0's return
value back as ``Result.return_value``; under Train V1, which ignores return values, every
rank reports the record (a report is a barrier all ranks must reach) and the driver reads
rank 0's from ``Result.metrics``.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from hptransfer.errors import ConfigError
from hptransfer.record import RunRecord
from hptransfer.spec import FrozenConfig
from hptransfer.tracking import RunInfo, Tracking
from hptransfer.training.order import RunOrder

__all__ = ["Progress", "RayScaling", "check_gpu_share", "check_gpus", "train_on_ray"]

_RECORD = "hptransfer_record"  # the key of the reported metrics (and returned dict)


class Progress(FrozenConfig):
    """Where rank 0 writes the validation points of a running job: an Optuna trial."""

    storage: str = Field(description="the study storage's URL (every node can reach it)")
    trial_id: int


class RayScaling(FrozenConfig):
    """How many workers train one run, and with what."""

    workers: int = Field(1, ge=1, description="data-parallel workers (Ray Train workers); "
                                              "the batch size must be divisible by it")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs Ray reserves for each worker, "
                                                      "and its torch threads")
    gpus_per_worker: float = Field(0.0, ge=0.0, description="GPUs per worker (a fraction "
                                                            "shares a card); 0: CPU, gloo")
    max_failures: int = Field(0, ge=-1, description="restarts after a worker fails (-1: "
                                                    "no limit); a restart resumes from the "
                                                    "run's last checkpoint, if it has one")


def train_on_ray(run: RunOrder, *, scaling: RayScaling | None = None, name: str = "run",
                 address: str | None = None, storage_path: str | Path | None = None,
                 progress: Progress | None = None,
                 tracked: tuple[Tracking, RunInfo] | None = None) -> RunRecord:
    """Train ``run`` as a Ray Train job with ``scaling.workers`` data-parallel workers and
    return its record.

    ``scaling``: None is one worker of one CPU. ``address``: the Ray cluster, as for
    :func:`hptransfer.backends.cluster.connect` (reused when this process is already connected).
    ``name`` labels the job; a timestamp and a random suffix make each job's folder under
    ``storage_path`` (default ``$HPTRANSFER_HOME/ray``) its own. ``tracked``: the trackers
    rank 0 logs the run to, and the run as they show it. An exception the training
    function raised on a worker is raised here as itself (e.g. the ValueError of a bad
    config), not as Ray's wrapper.
    """
    from hptransfer.backends.cluster import connect
    from hptransfer.study.storage import home
    from hptransfer.training.ranks import rows_per_worker

    scaling = scaling or RayScaling()
    rows_per_worker(run.hparams.batch_size, scaling.workers)  # refuse before submitting
    check_gpu_share(scaling.workers, scaling.gpus_per_worker)
    connect(address)
    gpu = scaling.gpus_per_worker > 0
    if gpu:
        check_gpus(scaling.workers, scaling.gpus_per_worker, address)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    v2 = _train_v2()
    job = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trainer = TorchTrainer(
        _train_loop,
        # the driver's Ray decides which Train runs the job: tell the workers (module doc)
        train_loop_config={"run": run.model_dump_json(), "threads": scaling.cpus_per_worker,
                           "report": not v2, "gpu": gpu,
                           "progress": progress.model_dump_json() if progress else None,
                           "tracked": [part.model_dump_json() for part in tracked]
                           if tracked else None},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.workers, use_gpu=gpu,
            resources_per_worker={"CPU": scaling.cpus_per_worker,
                                  **({"GPU": scaling.gpus_per_worker} if gpu else {})},
            # V1 reserves a CPU for its coordinating actor by default, which idles: on a
            # cluster of workers × cpus CPUs the job would wait for it forever. V2's needs
            # none (and V2 refuses the argument).
            **({} if v2 else {"trainer_resources": {"CPU": 0}})),
        run_config=RunConfig(
            name=job, storage_path=str(storage_path or home() / "ray"),
            failure_config=FailureConfig(max_failures=scaling.max_failures)))
    try:
        result = trainer.fit()
    except Exception as error:
        cause = _worker_error(error)
        if cause is error:
            raise
        raise cause from error
    return RunRecord.model_validate_json(_returned(result))


def _train_loop(config: dict[str, Any]) -> str:
    """One Ray Train worker: train this rank's share and return (rank 0) the record."""
    import ray.train

    run = RunOrder.model_validate_json(config["run"])
    device = None
    if config["gpu"]:
        from ray.train.torch import get_device

        device = str(get_device())
    on_eval = None
    rank0 = ray.train.get_context().get_world_rank() == 0
    if config["progress"] is not None and rank0:
        on_eval = _reporter(Progress.model_validate_json(config["progress"]))
    log = None
    if config["tracked"] is not None and rank0:
        from hptransfer.tracking import RunLog

        tracking, info = config["tracked"]
        log = RunLog(Tracking.model_validate_json(tracking), RunInfo.model_validate_json(info))
        on_eval = _logging(log, on_eval)
    try:
        trained = run.train(threads=config["threads"], device=device, on_eval=on_eval)
    except Exception as error:
        if log is not None:
            log.finish("error", reason=f"{type(error).__name__}: {error}")
        raise
    if log is not None:
        log.finish(trained.status.value, trained)
    record = trained.model_dump_json()
    if config["report"]:
        ray.train.report({_RECORD: record})
    return record


def _reporter(progress: Progress):
    """An ``on_eval`` writing each validation point into the trial (never stopping it)."""
    from hptransfer.record import Verdict
    from hptransfer.study.storage import Access, open_storage

    storage = open_storage(progress.storage, Access.UPDATE)

    def on_eval(point) -> Verdict:
        storage.set_trial_intermediate_value(progress.trial_id, point.tokens, point.loss)
        return Verdict.CONTINUE

    return on_eval


def _logging(log, on_eval):
    """``on_eval`` that logs each point to the trackers first."""
    from hptransfer.record import Verdict

    def logged(point) -> Verdict:
        log.point(point)
        return on_eval(point) if on_eval is not None else Verdict.CONTINUE

    return logged


def check_gpu_share(workers: int, per_worker: float, flag: str = "--gpus-per-worker") -> None:
    """Refuse a fraction of a GPU per worker for a job of two workers or more: Ray may then
    place two ranks of the job on one card, and NCCL refuses two ranks of one communicator
    on the same device (the job fails at its first collective, after the model is built).
    One worker may take a fraction (a small run beside others on a card)."""
    if workers >= 2 and 0 < per_worker and per_worker != int(per_worker):
        raise ConfigError(
            f"{flag} {per_worker:g} with {workers} workers: NCCL cannot run two ranks of one "
            f"job on the same GPU, and a fraction lets Ray put them there; give "
            f"{flag} 1 (or a whole number), or --workers 1 to share a card, or "
            f"{flag} 0 to train on the CPU")


def check_gpus(workers: int, per_worker: float, address: str | None = None,
               flag: str = "--gpus-per-worker") -> None:
    """Refuse a GPU job the connected cluster cannot place: Ray would queue it forever.
    Each worker's share must fit on one node, and all of them on the cluster."""
    from hptransfer.backends.cluster import require_ray

    ray = require_ray()
    nodes = [float(n.get("Resources", {}).get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    placeable = sum(int(gpus // per_worker + 1e-9) for gpus in nodes)
    if placeable < workers:
        where = f" at {address}" if address else ""
        raise ConfigError(
            f"{workers} worker(s) × {per_worker:g} GPU ({flag}) do not fit on the Ray cluster"
            f"{where}: its {len(nodes)} node(s) have {', '.join(f'{g:g}' for g in nodes)} "
            f"GPU(s); "
            f"start Ray on GPU machines (ray start --num-gpus N), or ask for fewer workers "
            f"or a smaller {flag} (0: train on the CPU)")


def _train_v2() -> bool:
    """Whether Ray Train V2 runs this job (it hands back return values; V1 ignores them)."""
    try:
        from ray.train.v2._internal.constants import is_v2_enabled
    except ImportError:  # a Ray from before Train V2
        return False
    return is_v2_enabled()


def _returned(result) -> str:
    """The record JSON of a finished job: Train V2's return value, else V1's metrics."""
    returned = getattr(result, "return_value", None)
    if returned is not None:
        return returned
    metrics = result.metrics or {}
    if _RECORD not in metrics:
        raise RuntimeError(f"the Ray Train job at {result.path} finished without a record; "
                           f"its logs are there")
    return metrics[_RECORD]


def _worker_error(error: BaseException) -> BaseException:
    """The exception a worker's training function raised, out of Ray's wrappers (V2's
    WorkerGroupError maps ranks to errors; a task error holds its cause), else ``error``."""
    failures = getattr(error, "worker_failures", None)
    if failures:
        error = failures[min(failures)]
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, Exception) else error

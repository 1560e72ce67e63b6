"""One training run as a Ray Train job: N data-parallel workers, one :class:`RunRecord`.

:func:`train_on_ray` submits :func:`hptransfer.training.loop.train` through
``ray.train.torch.TorchTrainer``: Ray places the N workers, sets up their process group
(gloo) and can restart the job after a worker dies (``max_failures``); the loop turns data
parallel when it finds the process group (:mod:`hptransfer.training.ranks`), so the record is
the one a local run returns, up to float rounding. The workers get the spec, hparams,
budget and seed by value and the corpus by *path*: each loads it and checks its content hash
(:func:`~hptransfer.data.corpus.check_hash`), so every node must see the same data at the
same path. Workers never open the study storage: the caller records the run.

How the record comes back: Ray Train V2 (the default in recent Ray) hands rank 0's return
value back as ``Result.return_value``; under Train V1, which ignores return values, every
rank reports the record (a report is a barrier all ranks must reach) and the driver reads
rank 0's from ``Result.metrics``. The workers train on the CPU (``use_gpu=False``): GPU
confirmation runs are future work (docs/ray.md).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import Field

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import RunRecord
from hptransfer.spec import FrozenConfig, ModelSpec

__all__ = ["RayRun", "RayScaling", "train_on_ray"]

_RECORD = "hptransfer_record"  # the key of the reported metrics (and returned dict)


class RayRun(FrozenConfig):
    """What one job trains: :func:`hptransfer.training.loop.train`'s inputs, by value, and the
    corpus by path (module docstring)."""

    spec: ModelSpec
    hparams: HParams
    budget: Budget
    seed: int = 0
    data: str | None = Field(None, description="corpus path every worker can read; None: "
                                               "the built-in corpus")
    corpus_hash: str = Field(description="content hash the workers' corpus must have")


class RayScaling(FrozenConfig):
    """How many workers train one run, and with what."""

    workers: int = Field(1, ge=1, description="data-parallel workers (Ray Train workers); "
                                              "the batch size must be divisible by it")
    cpus_per_worker: int = Field(1, ge=1, description="CPUs Ray reserves for each worker, "
                                                      "and its torch threads")
    max_failures: int = Field(0, ge=-1, description="restarts after a worker fails (-1: "
                                                    "no limit); a restart trains from step 0")


def train_on_ray(run: RayRun, *, scaling: RayScaling | None = None, name: str = "run",
                 address: str | None = None, storage_path: str | Path | None = None
                 ) -> RunRecord:
    """Train ``run`` as a Ray Train job with ``scaling.workers`` data-parallel workers and
    return its record.

    ``scaling``: None is one worker of one CPU. ``address``: the Ray cluster, as for
    :func:`hptransfer.backends.cluster.connect` (reused when this process is already connected).
    ``name`` labels the job; a timestamp and a random suffix make each job's folder under
    ``storage_path`` (default ``$HPTRANSFER_HOME/ray``) its own. An exception the training
    function raised on a worker is raised here as itself (e.g. the ValueError of a bad
    config), not as Ray's wrapper.
    """
    from hptransfer.backends.cluster import connect
    from hptransfer.study.storage import home
    from hptransfer.training.ranks import rows_per_worker

    scaling = scaling or RayScaling()
    rows_per_worker(run.hparams.batch_size, scaling.workers)  # refuse before submitting
    connect(address)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    v2 = _train_v2()
    job = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    trainer = TorchTrainer(
        _train_loop,
        # the driver's Ray decides which Train runs the job: tell the workers (module doc)
        train_loop_config={"run": run.model_dump_json(), "threads": scaling.cpus_per_worker,
                           "report": not v2},
        torch_config=TorchConfig(backend="gloo"),
        scaling_config=ScalingConfig(
            num_workers=scaling.workers, use_gpu=False,
            resources_per_worker={"CPU": scaling.cpus_per_worker},
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

    from hptransfer.data.corpus import check_hash, load_corpus
    from hptransfer.training.loop import train

    run = RayRun.model_validate_json(config["run"])
    corpus = load_corpus(run.data)
    check_hash(corpus, run.corpus_hash)
    record = train(run.spec, run.hparams, run.budget, corpus, seed=run.seed,
                   threads=config["threads"]).model_dump_json()
    if config["report"]:
        ray.train.report({_RECORD: record})
    return record


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

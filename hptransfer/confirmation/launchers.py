"""Where a confirmation run trains: a :class:`Launcher`.

:func:`hptransfer.confirmation.runs.confirm` records its runs the same way wherever they
train; what differs is the launcher:

- :class:`LocalLauncher`: this process (on the CPU or one card), with ``processes - 1``
  helper processes beside it training other runs of the same confirmation;
- :class:`RayTrainLauncher`: each run a Ray Train job of ``workers`` data-parallel workers
  (:mod:`hptransfer.backends.ray_train`);
- :class:`TorchrunLauncher`: every rank of the torchrun job this process is one of trains
  each run together (:mod:`hptransfer.confirmation.torchrun`).

:func:`make_launcher` turns ``confirm``'s options into one, refusing options that do not fit
before anything runs. Then each launcher answers four questions: ``lead`` — which process
records the runs (torchrun: rank 0; the other ranks follow it); ``check`` — can it train
this prediction (refused before any run, not found five times); ``trackers`` — does this
process log a run to the experiment trackers, or does the job's own rank 0; ``run`` — train
one run, returning its :class:`~hptransfer.record.RunRecord`. A new place to train is a
frozen dataclass with these members, and a branch of :func:`make_launcher`.

Nothing here imports torch, Optuna or Ray at import time: each launcher imports its engine
when it checks or runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Protocol, TypeVar

from hptransfer.backends import Backend
from hptransfer.errors import ConfigError
from hptransfer.training.execution import Execution

if TYPE_CHECKING:
    from hptransfer.backends.ray_train import RayScaling
    from hptransfer.confirmation.torchrun import TorchrunJob
    from hptransfer.data.corpus import Corpus
    from hptransfer.hparams import HParams
    from hptransfer.record import RunRecord
    from hptransfer.spec import ModelSpec
    from hptransfer.tracking import RunInfo, Tracking
    from hptransfer.training.loop import EvalCallback
    from hptransfer.training.order import RunOrder

__all__ = ["Launcher", "LocalLauncher", "RayTrainLauncher", "TorchrunLauncher", "TrialRef",
           "make_launcher"]

T = TypeVar("T")


@dataclass(frozen=True)
class TrialRef:
    """The trial a run is recorded as, as the process recording it holds it: what a
    launcher may need besides the run's order."""

    name: str  # "{optuna study}.t{number}": a Ray job's name
    trial_id: int  # Optuna's id: a Ray job's rank 0 writes the live curve there
    info: RunInfo  # the run as the trackers show it: a Ray job's rank 0 logs it
    tracking: Tracking | None
    corpus: Corpus  # the order's corpus, loaded and checked here: a local run trains on it


class Launcher(Protocol):
    """Where confirmation runs train (module docstring). Every launcher is a frozen
    dataclass with an ``execution`` field (``dataclasses.replace`` binds its checkpoints)."""

    @property
    def backend(self) -> Backend: ...  # recorded on each run's trial

    @property
    def workers(self) -> int: ...  # data-parallel workers of each run (recorded)

    @property
    def threads(self) -> int: ...  # torch threads of each process training a run

    @property
    def processes(self) -> int: ...  # runs side by side on this machine

    @property
    def auto(self) -> bool: ...  # processes × threads chosen by workers="auto"

    @property
    def execution(self) -> Execution: ...

    def lead(self, confirm: Callable[[Launcher], T]) -> T | None:
        """``confirm(launcher)`` in the process that records the runs; a process that
        only trains (a torchrun rank other than 0) trains what it is sent, and None."""
        ...

    def check(self, spec: ModelSpec, predicted: HParams, url: str | None) -> Launcher:
        """Refuse what this launcher cannot train, before any run; the launcher to train
        with (completed with what the checks found). ``url``: the study storage's (None: a
        storage object without one)."""
        ...

    def trackers(self, tracking: Tracking | None) -> Tracking | None:
        """The trackers this process logs a run to (None: the job logs its own)."""
        ...

    def run(self, order: RunOrder, on_eval: EvalCallback, trial: TrialRef) -> RunRecord:
        """Train one run; raises what the training raised."""
        ...


@dataclass(frozen=True)
class LocalLauncher:
    """This process, on the CPU or one card; ``processes`` runs side by side in all."""

    backend: ClassVar[Backend] = Backend.LOCAL
    workers: ClassVar[int] = 1

    threads: int
    execution: Execution = Execution()
    processes: int = 1  # this one, and processes - 1 helpers
    auto: bool = False
    device: str | None = None  # None: the CPU

    def lead(self, confirm: Callable[[Launcher], T]) -> T | None:
        return confirm(self)

    def check(self, spec: ModelSpec, predicted: HParams, url: str | None) -> Launcher:
        from hptransfer.models.registry import family_of
        from hptransfer.training.device import check_memory, resolve_device

        # the whole model is this process's (a rank of a job checks its own share)
        check_memory(family_of(spec).parameter_count(spec, embedding=True),
                     resolve_device(self.device), f"the target model at width {spec.width}")
        return self

    def trackers(self, tracking: Tracking | None) -> Tracking | None:
        return tracking

    def run(self, order: RunOrder, on_eval: EvalCallback, trial: TrialRef) -> RunRecord:
        from hptransfer.training.loop import train

        # the corpus this process already loaded and checked: not loaded again per run
        return train(order.spec, order.hparams, order.budget, trial.corpus, seed=order.seed,
                     on_eval=on_eval, threads=self.threads, device=self.device,
                     execution=order.execution)


@dataclass(frozen=True)
class RayTrainLauncher:
    """Each run a Ray Train job on the cluster at ``address``."""

    backend: ClassVar[Backend] = Backend.RAY
    processes: ClassVar[int] = 1  # Ray places the jobs; this process waits for each
    auto: ClassVar[bool] = False

    scaling: RayScaling
    address: str | None = None
    execution: Execution = Execution()
    storage_url: str | None = None  # where a job's rank 0 writes the live curve (check's)

    @property
    def workers(self) -> int:
        return self.scaling.workers

    @property
    def threads(self) -> int:
        return self.scaling.cpus_per_worker  # each worker's threads are its CPUs

    def lead(self, confirm: Callable[[Launcher], T]) -> T | None:
        return confirm(self)

    def check(self, spec: ModelSpec, predicted: HParams, url: str | None) -> Launcher:
        from hptransfer.backends.cluster import check_shared_storage, connect
        from hptransfer.backends.ray_train import check_gpus
        from hptransfer.training.ranks import rows_per_worker

        rows_per_worker(predicted.batch_size, self.workers)
        connect(self.address)
        ready = self
        if url is not None:  # (an in-memory storage object: no live curve)
            check_shared_storage(url, self.address)
            ready = dataclasses.replace(self, storage_url=url)
        if self.scaling.gpus_per_worker > 0:  # Ray would queue a job it cannot place forever
            check_gpus(self.scaling.workers, self.scaling.gpus_per_worker, self.address)
        return ready

    def trackers(self, tracking: Tracking | None) -> Tracking | None:
        return None  # the job's rank 0 trains the run, so it logs it (``run``)

    def run(self, order: RunOrder, on_eval: EvalCallback, trial: TrialRef) -> RunRecord:
        from hptransfer.backends.ray_train import Progress, train_on_ray

        # ``on_eval`` is not called: the job's rank 0 writes each point into the trial
        # itself (``progress``) while this process holds the trial's lease
        progress = (Progress(storage=self.storage_url, trial_id=trial.trial_id)
                    if self.storage_url is not None else None)
        tracked = None if trial.tracking is None else (trial.tracking, trial.info)
        return train_on_ray(order, scaling=self.scaling, address=self.address,
                            name=trial.name, progress=progress, tracked=tracked)


@dataclass(frozen=True)
class TorchrunLauncher:
    """Every rank of the torchrun job this process is one of; ``job`` once joined
    (``lead``), with rank 0 recording."""

    backend: ClassVar[Backend] = Backend.TORCHRUN
    processes: ClassVar[int] = 1
    auto: ClassVar[bool] = False

    execution: Execution = Execution()
    device: str | None = None  # as asked: None is this rank's GPU if torch sees one
    asked_threads: int | None = None  # None: this node's CPUs shared among its ranks
    job: TorchrunJob | None = None

    @property
    def workers(self) -> int:
        return self._joined().ranks.size

    @property
    def threads(self) -> int:
        return self._joined().threads

    def _joined(self) -> TorchrunJob:
        if self.job is None:
            raise RuntimeError("a torchrun launcher trains once it has joined its job: "
                               "call it inside lead()")
        return self.job

    def lead(self, confirm: Callable[[Launcher], T]) -> T | None:
        from hptransfer.confirmation import torchrun

        job = torchrun.join(self.device, self.asked_threads)
        if job.ranks.rank != 0:
            torchrun.follow(job)
            return None
        try:
            return confirm(dataclasses.replace(self, job=job))
        finally:
            torchrun.release(job)

    def check(self, spec: ModelSpec, predicted: HParams, url: str | None) -> Launcher:
        from hptransfer.training.ranks import rows_per_worker

        rows_per_worker(predicted.batch_size, self.workers)
        return self

    def trackers(self, tracking: Tracking | None) -> Tracking | None:
        return tracking  # rank 0, this process, trains a share of the run and logs it

    def run(self, order: RunOrder, on_eval: EvalCallback, trial: TrialRef) -> RunRecord:
        return self._joined().train(order, on_eval)


def make_launcher(backend: Backend, *, threads: int | None, workers: int | str, width: int,
                  address: str | None, cpus_per_worker: int, gpus_per_worker: float,
                  device: str | None, execution: Execution) -> Launcher:
    """The launcher of ``confirm``'s options, which are checked against each other (before
    anything runs). A torchrun launcher joins its job in ``lead``."""
    chosen = _chosen(backend, threads=threads, workers=workers, width=width, address=address,
                     cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker,
                     device=device, execution=execution)
    # a Ray run's ranks write their checkpoints on their own nodes, which this process
    # cannot see: only this machine's folder is checked
    if chosen.backend is not Backend.RAY:
        _check_checkpoint_folder(execution)
    return chosen


def _chosen(backend: Backend, *, threads: int | None, workers: int | str, width: int,
            address: str | None, cpus_per_worker: int, gpus_per_worker: float,
            device: str | None, execution: Execution) -> Launcher:
    from hptransfer.study.runner import AUTO, auto_placement
    from hptransfer.training.device import check_device, resolve_device, resolve_threads
    from hptransfer.training.execution import Sharding

    if workers != AUTO and (not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"workers must be a positive number or 'auto', got {workers!r}")
    if cpus_per_worker < 1:
        raise ConfigError(f"cpus_per_worker must be at least 1, got {cpus_per_worker}")
    if gpus_per_worker < 0:
        raise ConfigError(f"gpus_per_worker must be 0 or more, got {gpus_per_worker}")
    if backend is not Backend.RAY and (address is not None or cpus_per_worker != 1
                                       or gpus_per_worker):
        raise ConfigError("--address, --cpus-per-worker and --gpus-per-worker apply only with "
                          "--backend ray")
    check_device(device)  # the form, for every backend ("", "CPU", "cuda:-1" are refused)
    if backend is not Backend.TORCHRUN and device is not None:
        resolve_device(device)  # a clear error where there is no such device
    if backend is Backend.LOCAL:
        if execution.sharding is Sharding.FSDP:
            raise ConfigError("--sharding fsdp shards a run over the ranks of a Ray (--workers "
                              "N) or torchrun job; a local run is one process holding the whole "
                              "model: use --backend ray or torchrun")
        if device is not None and device.startswith("cuda"):  # one card: one run at a time
            return LocalLauncher(threads=threads or resolve_threads(), execution=execution,
                                 device=device)
        if workers == AUTO:  # side by side at small widths, one process with all CPUs wide
            chosen = auto_placement(width, resolve_threads(), threads)
            return LocalLauncher(threads=chosen.threads, processes=chosen.workers, auto=True,
                                 execution=execution, device=device)
        return LocalLauncher(threads=threads or max(1, resolve_threads() // workers),
                             processes=workers, execution=execution, device=device)
    if backend is Backend.TORCHRUN:
        if workers != AUTO:
            raise ConfigError("--workers does not apply with --backend torchrun: every process "
                              "torchrun starts (--nnodes × --nproc-per-node) is one worker")
        return TorchrunLauncher(execution=execution, device=device, asked_threads=threads)
    from hptransfer.backends.cluster import require_ray
    from hptransfer.backends.ray_train import RayScaling

    require_ray()  # the install line before anything else happens
    from hptransfer.backends.ray_train import check_gpu_share

    if workers != AUTO:
        check_gpu_share(workers, gpus_per_worker)
    if threads is not None or device is not None:
        raise ConfigError("--threads and --device set a local run's; on Ray each worker trains "
                          "with --cpus-per-worker threads, on a GPU with --gpus-per-worker")
    scaling = RayScaling(workers=1 if workers == AUTO else workers,
                         cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    return RayTrainLauncher(scaling=scaling, address=address, execution=execution)


def _check_checkpoint_folder(execution: Execution) -> None:
    """An unwritable checkpoint folder (/proc/ck, a read-only mount) is refused now, not
    found at the first checkpoint after up to ten minutes of training, in every run."""
    from hptransfer.study.storage import unwritable_folder

    policy = execution.checkpoint
    if policy is None:
        return
    blocked = unwritable_folder(Path(policy.folder))
    if blocked is not None:
        raise ConfigError(f"--checkpoint-dir {policy.folder}: cannot write checkpoints in "
                          f"{blocked} (permission denied, read-only, or not a folder); give a "
                          f"folder you can write to, or --checkpoint-minutes 0 for none")

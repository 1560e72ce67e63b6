"""Confirmation runs as a torchrun job, for clusters without Ray (Slurm, Kubernetes).

Every process of ::

    torchrun --nnodes M --nproc-per-node N -m hptransfer.cli confirm --backend torchrun ...

is one data-parallel rank of every confirmation run. Global rank 0 *is* the confirm: it
predicts, opens the study storage, claims each waiting run under a lease, sends the run's
:class:`~hptransfer.training.order.RunOrder` to the other ranks (JSON over the process group:
nothing is pickled), trains its own share and records the run, exactly as a local confirm
does, so the runs land in the same study record. The other ranks never open the storage:
they train each order they receive, and stop at the empty order rank 0 sends when it is done
or fails (:func:`release`, always called).

A run that raises on every rank (a bad corpus, a refused config) is recorded by rank 0 as
that run's error, and every rank goes on to the next. So is a run that raises on one rank:
the others leave it at once with :class:`~hptransfer.training.ranks.PeerFailed` naming that
rank's error (each run has a process group of its own:
:func:`~hptransfer.training.ranks.run_together`), and the job's group carries the next
order. A rank that dies takes the job down (torchrun stops the others); the run's trial
then loses its lease, and the same command retries it, resuming from its checkpoint.
"""

from __future__ import annotations

import os
import sys
from typing import NamedTuple, NoReturn

from hptransfer.errors import ConfigError
from hptransfer.record import RunRecord
from hptransfer.training.order import RunOrder
from hptransfer.training.ranks import Ranks

__all__ = ["TorchrunJob", "end_process", "follow", "join", "release"]

# what torchrun sets in every process it starts
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class TorchrunJob(NamedTuple):
    """This process's place in the torchrun job, and what it computes with."""

    ranks: Ranks
    device: str  # this rank's: cuda:LOCAL_RANK, or cpu
    threads: int

    def train(self, order: RunOrder, on_eval=None) -> RunRecord:
        """Rank 0: send the order to the other ranks, then train this rank's share."""
        self.ranks.shared_text(order.model_dump_json())
        return order.train(threads=self.threads, device=self.device, on_eval=on_eval)


def join(device: str | None = None, threads: int | None = None) -> TorchrunJob:
    """Join the torchrun job this process was started in (its process group: NCCL when this
    rank trains on a GPU, else gloo).

    ``device``: None picks ``cuda:LOCAL_RANK`` when torch sees a GPU, else the CPU; ``cuda``
    means this rank's card. ``threads``: None shares this node's CPUs among its ranks.
    """
    import torch
    import torch.distributed as dist

    from hptransfer.training.device import resolve_device, resolve_threads

    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise ConfigError(
            f"--backend torchrun: this process was not started by torchrun ({', '.join(missing)} "
            f"not set); run it as: torchrun --nproc-per-node N -m hptransfer.cli confirm "
            f"--backend torchrun ... (or use --backend local or ray)")
    local = int(os.environ["LOCAL_RANK"])
    if device is None:
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    elif device == "cuda":
        device = f"cuda:{local}"
    on = resolve_device(device)
    if not dist.is_initialized():
        if on.type == "cuda":
            torch.cuda.set_device(on)
        dist.init_process_group("nccl" if on.type == "cuda" else "gloo")
    if threads is None:
        threads = max(1, resolve_threads() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))
    return TorchrunJob(ranks=Ranks.current(), device=device, threads=threads)


def follow(job: TorchrunJob) -> int:
    """A rank other than 0: train every order rank 0 sends until the empty one; returns how
    many runs it trained."""
    runs = 0
    while (text := job.ranks.shared_text(None)) is not None:
        order = RunOrder.model_validate_json(text)
        try:
            order.train(threads=job.threads, device=job.device)
        except Exception as error:  # noqa: BLE001 - rank 0 records it; go on with the next
            print(f"rank {job.ranks.rank}: the run failed ({type(error).__name__}: {error}); "
                  f"rank 0 records it", file=sys.stderr)
        runs += 1
    _leave()
    return runs


def release(job: TorchrunJob) -> None:
    """Rank 0: tell the other ranks there is nothing more to train, then leave the group."""
    job.ranks.shared_text(None)
    _leave()


def end_process(code: int) -> NoReturn:
    """End this rank's process with ``code`` once it has left the job (:func:`follow`,
    :func:`release`) and written what it reports, without the interpreter's teardown.

    Why: about one FSDP2 torchrun job in 15 on the 2-core CI machine (2 gloo ranks; 2 of
    35 in a loop of the test) had a rank abort *after* its last line of Python ran
    ("terminate called without an active exception", SIGABRT; faulthandler showed no
    Python frame), in the C++ teardown of torch's distributed state at exit, and torchrun
    then failed the whole job although every run was recorded. Nothing is left to tear
    down that matters: the group is destroyed, every run is committed to the storage by
    rank 0 as it ends, trackers finish each run, and the output is flushed here."""
    import logging

    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    logging.shutdown()
    os._exit(code)


def _leave() -> None:
    import torch.distributed as dist

    # every rank's last collective done before any tears its transport down (a rank that
    # leaves first can make a peer's gloo threads abort)
    dist.barrier()
    dist.destroy_process_group()

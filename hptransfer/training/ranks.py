"""Data-parallel ranks: which rows of each global batch this process trains on.

Under ``torch.distributed`` with N > 1 processes (Ray Train, ``torchrun``, a test's gloo
group) every rank builds the same model from the same seed, draws the same global batch and
trains on its own contiguous 1/N of the rows; DDP (or FSDP2's reduce-scatter, when the model
is sharded: :func:`distribute`) averages the equal slices' gradients into the full batch's.
Every decision that ends the loop is taken on values all ranks share
(:meth:`Ranks.mean`, :meth:`Ranks.shared`): a rank that leaves alone would leave the others
waiting in a collective forever.

A rank can still fail alone (an out-of-memory on one card, a full disk under rank 0's
checkpoint, rank 0's ``on_eval`` losing its storage). :func:`run_together` trains each run
on a process group of its own: the failing rank names itself in the job's store and lets
the run's group go, which closes its connections and ends the collective its peers wait in
(gloo: "connection closed by peer"); each peer lets the group go in turn, which frees the
peers that wait only on it. They raise :class:`PeerFailed` with the first failure's reason,
and the job's own group stays whole for the next run (a torchrun job's next order).
"""

from __future__ import annotations

import gc
import traceback
import warnings
import weakref
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple, TypeVar

import torch

from hptransfer.errors import ConfigError
from hptransfer.training.execution import Sharding

__all__ = ["PeerFailed", "Ranks", "distribute", "in_process_group", "rows_per_worker",
           "run_together"]

T = TypeVar("T")


def rows_per_worker(batch_size: int, workers: int) -> int:
    """Rows of each global batch one of ``workers`` data-parallel ranks trains on; a
    ValueError when they cannot all get the same number (their gradients would then not
    average to the full batch's)."""
    if batch_size % workers:
        raise ConfigError(
            f"batch_size {batch_size} cannot be split evenly over {workers} data-parallel "
            f"workers (each trains batch_size / workers rows of every step); use a batch "
            f"size divisible by {workers}, or another number of workers")
    return batch_size // workers


class Ranks(NamedTuple):
    """This process's place among data-parallel ranks: (0, 1) when training alone. ``group``
    is the process group their messages go over (None: the default one)."""

    rank: int
    size: int
    group: Any = None

    @classmethod
    def current(cls) -> Ranks:
        import torch.distributed as dist

        if in_process_group() and dist.get_world_size() > 1:
            return cls(dist.get_rank(), dist.get_world_size())
        return cls(0, 1)

    @property
    def parallel(self) -> bool:
        return self.size > 1

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous slice of a global batch: rows [r·B/N, (r+1)·B/N)."""
        if not self.parallel:
            return batch
        share = rows_per_worker(batch.shape[0], self.size)
        return batch[self.rank * share:(self.rank + 1) * share]

    def mean(self, loss: torch.Tensor) -> float:
        """The loss averaged over the ranks (each a mean over equally many tokens): the loss
        of the global batch, the same float on every rank."""
        if not self.parallel:
            return loss.item()
        import torch.distributed as dist

        total = loss.detach().double().to(_wire())
        dist.all_reduce(total, group=self.group)
        return total.item() / self.size

    def shared(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the others' is ignored): one voice decides."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        message = torch.tensor([value], dtype=torch.float64, device=_wire())
        dist.broadcast(message, src=0, group=self.group)
        return message.item()

    def shared_text(self, text: str | None) -> str | None:
        """Rank 0's ``text`` (or None) on every rank, sent as bytes (nothing is pickled)."""
        if not self.parallel:
            return text
        import torch.distributed as dist

        data = b"" if text is None else text.encode()
        length = int(self.shared(-1.0 if text is None else float(len(data))))
        if length < 0:
            return None
        message = torch.zeros(length, dtype=torch.uint8, device=_wire())
        if self.rank == 0 and length:
            message.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        if length:
            dist.broadcast(message, src=0, group=self.group)
        return message.cpu().numpy().tobytes().decode()


def in_process_group() -> bool:
    """Whether this process belongs to a torch.distributed process group (of any size)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _wire() -> torch.device:
    """Where collective messages live: NCCL moves only CUDA tensors, gloo CPU ones."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def distribute(model: torch.nn.Module, sharding: Sharding, device: torch.device,
               group: Any = None) -> torch.nn.Module:
    """An already built ``model`` ready for data-parallel training over ``group`` (None: the
    default process group); returns what the training step calls.

    REPLICATE wraps it in DDP (the optimizer keeps working on ``model``, whose parameters the
    wrapper shares). FSDP shards it in place with FSDP2, every ``nn.ModuleList`` element and
    then the root (:func:`hptransfer.models.sharding.shard_blocks`). A sharded *run* never gets
    here: it builds its model straight into its shards
    (:func:`hptransfer.training.shards.build_sharded`), so that no rank holds it whole. The
    optimizer must be built after this call.
    """
    if sharding is Sharding.REPLICATE:
        from torch.nn.parallel import DistributedDataParallel

        # Every rank built the same init from the same seed; DDP still broadcasts rank 0's
        # parameters on construction, which costs one message and guards against a seed
        # mixup.
        return DistributedDataParallel(model, process_group=group, device_ids=[device.index]
                                       if device.type == "cuda" else None)
    from hptransfer.models.sharding import shard_blocks
    from hptransfer.training.shards import device_mesh

    shard_blocks(model, device_mesh(device, group), blocks=None)
    return model


class PeerFailed(RuntimeError):
    """Another rank of this run failed (the message is its error); this rank stopped with
    it instead of waiting in a collective for a rank that is gone."""


def run_together(ranks: Ranks, body: Callable[[Ranks], T]) -> T:
    """``body(ranks)`` on a process group of this run's own, created and destroyed by every
    rank of the job alike; in one process, just ``body(ranks)``.

    When ``body`` raises on one rank, that rank records its error in the job's store (the
    first failure of the run wins) and then lets the run's group go: it drops every
    reference to it (:func:`_release_frames`: the model, DDP and FSDP2 hold the group, and
    the error's traceback holds them) and destroys it, so its connections close. A peer
    blocked in a collective with that rank fails at once and lets the group go the same
    way, which frees the peers waiting on *it*: in gloo's ring all-gather a rank waits on
    its neighbour only, which may be healthy, so the failure travels around the group one
    hop at a time (measured, 2 and 4 gloo ranks: every rank out 1 to 2 s after the raise,
    instead of at the collective timeout). A peer raises :class:`PeerFailed` with the first
    failure's reason, unless its own error is not a communication error (every rank hit the
    same ConfigError: each raises its own). The error that leaves here carries the run's
    traceback as text (a note), not as frames. The run's group has the collective timeout
    of the job's group.
    """
    if not ranks.parallel:
        return body(ranks)
    import torch.distributed as dist

    from hptransfer.training.shards import forget_meshes

    # with the job's collective timeout: new_group's default is torch's (30 minutes on gloo),
    # not the one the job's group was made with
    group = dist.new_group(backend=dist.get_backend(), timeout=_job_timeout())
    key = f"hptransfer/failed/{group.group_name}"
    try:
        result = body(ranks._replace(group=group))
        # no rank tears the group down while a peer may still be in the run's last message
        dist.barrier(group=group)
    except Exception as error:
        forget_meshes(group.group_name)
        mine = f"rank {ranks.rank} of {ranks.size} failed: {type(error).__name__}: {error}"
        # recorded before this rank's connections close: a peer that sees them close reads
        # this reason, not its own "connection closed"
        first = dist.distributed_c10d._get_default_store().compare_set(
            key, "", mine).decode(errors="replace")
        _release_frames(error)
        alive = weakref.ref(group)
        dist.destroy_process_group(group)
        del group
        gc.collect()  # FSDP2's state is full of reference cycles
        if alive() is not None:
            warnings.warn(
                "the failed run's process group is still referenced after the run's frames "
                "were released, so its connections stay open: a peer blocked in a "
                "collective with this rank waits until the collective timeout", stacklevel=2)
        if first != mine and isinstance(error, RuntimeError):
            raise PeerFailed(f"{first}; rank {ranks.rank} stopped with it") from error
        raise
    forget_meshes(group.group_name)  # (else every run would leave its group's connections open)
    dist.destroy_process_group(group)
    return result


def _job_timeout() -> timedelta | None:
    """The collective timeout the job's own group was made with (``init_process_group``'s
    ``timeout``), or None (torch's default) where this torch does not tell it."""
    import torch.distributed as dist

    try:
        backend = dist.distributed_c10d._get_default_group()._get_backend(_wire())
        return backend.options._timeout
    except (AttributeError, RuntimeError):
        return None


def _release_frames(error: BaseException) -> None:
    """Replace the traceback of ``error``, and of every exception it chains, by its text (a
    note), so that the frames of the failed run, and the model they hold, can be freed.

    Clearing the frames' locals (``traceback.clear_frames``) is not enough from Python 3.11:
    a frame still holds the function it runs, and a nested function holds its closure. An
    error raised in a module with hooks (FSDP2 hooks every block and the root) passes
    through ``Module._call_impl``'s ``inner``, whose closure is the module. Measured with
    FSDP2 on gloo: a rank whose error came from inside its model (its own, or a peer's
    closed connection in an all-gather) kept the model, hence the FSDP2 state and the run's
    group, alive as long as the error, and the ranks waiting on it waited for the
    collective timeout (2 ranks, the error raised in a block; 4 ranks, a peer one hop away
    from the failing rank).
    """
    pending, seen = [error], set()
    while pending:
        exception = pending.pop()
        if exception is None or id(exception) in seen:
            continue
        seen.add(id(exception))
        if exception.__traceback__ is not None:
            text = "".join(traceback.format_tb(exception.__traceback__))
            traceback.clear_frames(exception.__traceback__)
            exception.__traceback__ = None
            _add_note(exception, "Traceback in the run (kept as text so that its frames "
                                 "could be freed; most recent call last):\n" + text.rstrip())
        pending += [exception.__cause__, exception.__context__]


def _add_note(exception: BaseException, note: str) -> None:
    """``exception.add_note(note)``; on Python 3.10 the note is kept in ``__notes__`` (not
    printed by that version's traceback module)."""
    if hasattr(exception, "add_note"):
        exception.add_note(note)
    else:
        exception.__notes__ = [*getattr(exception, "__notes__", ()), note]

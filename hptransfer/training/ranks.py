"""Data-parallel ranks: which rows of each global batch this process trains on.

Under ``torch.distributed`` with N > 1 processes (Ray Train, ``torchrun``, a test's gloo
group) every rank builds the same model from the same seed, draws the same global batch and
trains on its own contiguous 1/N of the rows; DDP (or FSDP2's reduce-scatter, when the model
is sharded: :func:`distribute`) averages the equal slices' gradients into the full batch's.
Every decision that ends the loop is taken on values all ranks share
(:meth:`Ranks.mean`, :meth:`Ranks.shared`): a rank that leaves alone would leave the others
waiting in a collective forever.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hptransfer.errors import ConfigError
from hptransfer.training.execution import Sharding

__all__ = ["Ranks", "distribute", "in_process_group", "rows_per_worker"]


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
    """This process's place among data-parallel ranks: (0, 1) when training alone."""

    rank: int
    size: int

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
        dist.all_reduce(total)
        return total.item() / self.size

    def shared(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the others' is ignored): one voice decides."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        message = torch.tensor([value], dtype=torch.float64, device=_wire())
        dist.broadcast(message, src=0)
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
            dist.broadcast(message, src=0)
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


def distribute(model: torch.nn.Module, sharding: Sharding, device: torch.device
               ) -> torch.nn.Module:
    """``model`` ready for data-parallel training over the process group; returns what the
    training step calls.

    REPLICATE wraps it in DDP (the optimizer keeps working on ``model``, whose parameters the
    wrapper shares). FSDP applies FSDP2's ``fully_shard`` to every element of every
    ``nn.ModuleList`` (a transformer's blocks, built-in or Hugging Face) and then to the
    root, in place: each rank keeps 1/N of every tensor as a DTensor under the *same*
    parameter name and global shape, which is why the µP param groups built afterwards from
    the role table (matched by name and shape) are those of the unsharded model. The
    optimizer must be built after this call.
    """
    import torch.distributed as dist

    if sharding is Sharding.REPLICATE:
        from torch.nn.parallel import DistributedDataParallel

        # Every rank built the same init from the same seed; DDP still broadcasts rank 0's
        # parameters on construction, which costs one message and guards against a seed
        # mixup.
        return DistributedDataParallel(model, device_ids=[device.index]
                                       if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    # innermost first: FSDP2 groups a module's parameters minus its sharded children's, so
    # children are sharded before the modules that hold them (reversed pre-order)
    for module in reversed(list(model.modules())):
        if isinstance(module, torch.nn.ModuleList):
            for block in module:
                fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model

"""Data-parallel ranks: which rows of each global batch this process trains on.

Under ``torch.distributed`` with N > 1 processes (Ray Train, ``torchrun``, a test's gloo
group) every rank builds the same model from the same seed, draws the same global batch and
trains on its own contiguous 1/N of the rows; DDP averages the equal slices' gradients into
the full batch's. Every decision that ends the loop is taken on values all ranks share
(:meth:`Ranks.mean`, :meth:`Ranks.shared`): a rank that leaves alone would leave the others
waiting in a collective forever.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from hptransfer.errors import ConfigError

__all__ = ["Ranks", "data_parallel", "rows_per_worker"]


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

        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
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

        total = loss.detach().double()
        dist.all_reduce(total)
        return total.item() / self.size

    def shared(self, value: float) -> float:
        """Rank 0's ``value`` on every rank (the others' is ignored): one voice decides."""
        if not self.parallel:
            return value
        import torch.distributed as dist

        message = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(message, src=0)
        return message.item()


def data_parallel(model: torch.nn.Module) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    # Every rank built the same init from the same seed; DDP still broadcasts rank 0's
    # parameters on construction, which costs one message and guards against a seed mixup.
    return DistributedDataParallel(model)

"""FSDP2 units of a model: which modules are sharded together.

A family says which modules are its blocks
(:meth:`~hptransfer.models.family.ModelFamily.parallelize`, next to its layers:
:func:`hptransfer.models.transformer.parallelize`, the Hugging Face families' decoder
layers); :func:`shard_blocks` makes each one an FSDP2 unit, then the root.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from hptransfer.errors import ConfigError

__all__ = ["shard_blocks"]


def _fully_shard():
    """FSDP2's ``fully_shard``, public in ``torch.distributed.fsdp`` from torch 2.6 on; an
    older torch (2.5 kept it in a private module, with another API) is refused."""
    import torch

    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"--sharding fsdp needs FSDP2 from torch 2.6 or later, and this is "
                          f"torch {torch.__version__}: pip install 'torch>=2.6' (the CUDA "
                          f"build of your cluster), or use --sharding replicate") from None
    return fully_shard


def shard_blocks(model: nn.Module, mesh: Any, *, blocks: list[nn.Module] | None) -> None:
    """FSDP2's ``fully_shard`` on each of ``blocks`` (None: every element of every
    ``nn.ModuleList``), then on the root, as torchtitan's ``parallelize`` does. Each block is
    one all-gather in the forward and one reduce-scatter in the backward; the root unit takes
    what is left (embedding, final norm, readout). Blocks go first because FSDP2 groups a
    module's parameters minus those of its already-sharded children. Every rank keeps 1/N of
    every tensor (dim 0) as a DTensor under the *same* name and global shape, which is why
    the µP init and param groups built from the role table (by name and shape) are those of
    the unsharded model."""
    fully_shard = _fully_shard()
    if blocks is None:
        # innermost lists first (reversed pre-order): a list inside a block is sharded
        # before the block that holds it
        blocks = [block for module in reversed(list(model.modules()))
                  if isinstance(module, nn.ModuleList) for block in module]
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)

"""FSDP2 units of a model: which modules are sharded together.

A family says which modules are its blocks
(:meth:`~hptransfer.models.family.ModelFamily.parallelize`, next to its layers:
:func:`hptransfer.models.transformer.parallelize`, the Hugging Face families' decoder
layers); :func:`shard_blocks` makes each one an FSDP2 unit, then the root. As in
torchtitan's ``parallelize`` (``apply_compile``, then ``apply_fsdp`` with its
``MixedPrecisionPolicy``), the same call compiles each block and sets the units' precision.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.spec import Compilation, Precision

__all__ = ["shard_blocks"]


def _fully_shard():
    """FSDP2's ``fully_shard``, public in ``torch.distributed.fsdp`` from torch 2.6 on; an
    older torch (2.5 kept it in a private module, with another API) is refused."""
    try:
        from torch.distributed.fsdp import fully_shard
    except ImportError:
        raise ConfigError(f"--sharding fsdp needs FSDP2 from torch 2.6 or later, and this is "
                          f"torch {torch.__version__}: pip install 'torch>=2.6' (the CUDA "
                          f"build of your cluster), or use --sharding replicate") from None
    return fully_shard


def shard_blocks(model: nn.Module, mesh: Any, *, blocks: list[nn.Module] | None,
                 precision: Precision = Precision.FP32,
                 compilation: Compilation = Compilation.EAGER) -> None:
    """FSDP2's ``fully_shard`` on each of ``blocks`` (None: every element of every
    ``nn.ModuleList``), then on the root, as torchtitan's ``parallelize`` does. Each block is
    one all-gather in the forward and one reduce-scatter in the backward; the root unit takes
    what is left (embedding, final norm, readout). Blocks go first because FSDP2 groups a
    module's parameters minus those of its already-sharded children. Every rank keeps 1/N of
    every tensor (dim 0) as a DTensor under the *same* name and global shape, which is why
    the µP init and param groups built from the role table (by name and shape) are those of
    the unsharded model.

    ``precision`` BF16: every unit gets FSDP2's ``MixedPrecisionPolicy`` with bf16
    parameters and fp32 gradient reduction (torchtitan's default): the sharded parameters,
    which the optimizer updates and checkpoints save, stay fp32; each unit all-gathers
    them cast to bf16 (half the bytes on the wire) and computes with them; their gradients
    are reduce-scattered in fp32, so averaging N ranks' gradients rounds once, not N times.
    Without it a bf16 run all-gathers and reduces fp32, and only autocast's matmuls are
    bf16 (:func:`hptransfer.training.device.autocast`, which the step keeps either way: the
    ops autocast runs in fp32 stay fp32).

    ``compilation`` COMPILED: each block is compiled in place (``Module.compile``) before it
    is sharded, as torchtitan's ``apply_compile`` does, and the root is left eager: FSDP2's
    hooks (the all-gather before a unit's forward, the reduce-scatter after its backward)
    run between compiled blocks instead of breaking one graph of the whole model at every
    unit, and the blocks, alike, share their compiled code. In place, not wrapped
    (``torch.compile(block)``), so that parameter names keep no ``_orig_mod.``: the role
    table, the optimizer groups and checkpoints find parameters by name."""
    fully_shard = _fully_shard()
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if blocks is None:
        # innermost lists first (reversed pre-order): a list inside a block is sharded
        # before the block that holds it
        blocks = [block for module in reversed(list(model.modules()))
                  if isinstance(module, nn.ModuleList) for block in module]
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if precision is Precision.BF16 else MixedPrecisionPolicy())
    if compilation is Compilation.COMPILED:
        # the outermost blocks only: a block inside another is compiled as part of it
        inner = {id(m) for block in blocks for m in block.modules() if m is not block}
        for block in blocks:
            if id(block) not in inner:
                block.compile()
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)

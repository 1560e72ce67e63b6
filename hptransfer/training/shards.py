"""A model built straight into its FSDP2 shards: no rank ever holds the whole model.

The torchtitan recipe (``torchtitan/trainer.py`` and each model's ``parallelize``): make the
model with its parameters on the meta device (shapes, no memory), let the family shard it
(:meth:`~hptransfer.models.family.ModelFamily.parallelize`: ``fully_shard`` per block, then
the root), allocate only this rank's shards with ``to_empty``, then initialise them. The init
is the family's µP init from the run's seed, the same numbers as the unsharded build's
(:func:`hptransfer.mup.tensors.initialize` draws each tensor whole on the CPU, one at a
time, and keeps this rank's rows), and the readout's τ is applied after it as in the
unsharded run (:func:`~hptransfer.mup.tensors.scale_init`).

Unlike torchtitan, only the *parameters* go to the meta device: buffers (rotary tables,
masks) are made for real, as the model's own code computes them, and copied back after
``to_empty`` (which empties buffers too). torchtitan's models re-create their buffers in an
``init_weights``; a Hugging Face model or a user's factory has no such method, and its
buffers are small.

Per rank, the weights then take :func:`shard_elements` × 4 bytes: the full count over N plus
FSDP2's padding of each tensor's first dimension to a multiple of N
(tests/test_distributed.py measures it, benchmarks/shard_memory.py prints it at 2 and 4 ranks).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hptransfer.hparams import HParams
from hptransfer.spec import ModelSpec
from hptransfer.training.execution import Compilation

if TYPE_CHECKING:
    from hptransfer.mup.roles import RoleTable

__all__ = ["build_sharded", "device_mesh", "forget_meshes", "local_bytes",
           "parameters_on_meta", "shard_elements"]


def device_mesh(device: torch.device, group: Any = None):
    """The 1-D mesh of the data-parallel ranks on ``device``'s type: over ``group`` (a run's
    own process group, :func:`hptransfer.training.ranks.run_alone`), else the whole world."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    if group is not None:
        # named after the group: DTensor caches how it redistributes an op by mesh, and a
        # mesh's equality ignores its process group, so an unnamed mesh over this run's group
        # would reuse a finished run's cached plan and its destroyed group ("could not resolve
        # the process group"); a name makes each run's mesh its own
        mesh = DeviceMesh.from_group(group, device.type,
                                     mesh_dim_names=(f"run{group.group_name}",))
        _MESHES.setdefault(group.group_name, []).append(mesh)
        return mesh
    return init_device_mesh(device.type, (dist.get_world_size(),))


# the meshes made over each run's group, by group name, until the run ends (forget_meshes)
_MESHES: dict[str, list[Any]] = {}


def forget_meshes(group_name: str) -> None:
    """Make the meshes over a finished run's group let go of it. A mesh keeps its groups in
    ``_pg_registry`` (torch 2.13; used only while torch.compile traces, eager code finds a
    group by name), and DTensor's caches keep the meshes for the life of the process: the
    group would never be destroyed, and a failed rank's peers would wait in its
    collectives until the timeout instead of seeing its connections close."""
    for mesh in _MESHES.pop(group_name, []):
        registry = getattr(mesh, "_pg_registry", None)
        if isinstance(registry, dict):
            registry.pop(group_name, None)


def build_sharded(spec: ModelSpec, hparams: HParams, *, seed: int, device: torch.device,
                  group: Any = None, compilation: Compilation = Compilation.EAGER
                  ) -> nn.Module:
    """``spec``'s model FSDP2-sharded over ``group``'s ranks (None: all), initialised from
    ``seed`` and ``hparams``' init multipliers exactly as the unsharded build is, with only
    this rank's shards ever allocated, on ``device``. Every rank of the group calls it.
    ``spec.precision`` BF16 gives each FSDP2 unit bf16 compute and fp32 gradient reduction,
    ``compilation`` COMPILED compiles each block (:func:`~hptransfer.models.sharding.
    shard_blocks`); the parameters are fp32 either way."""
    from hptransfer.models.registry import family_of, role_table
    from hptransfer.mup.tensors import scale_init

    family = family_of(spec)
    family.check(spec)
    with parameters_on_meta():
        model = family.make(spec)
    family.configure(model, spec)
    family.parallelize(model, device_mesh(device, group), precision=spec.precision,
                       compilation=compilation)
    buffers = {name: buffer.detach().to("cpu", copy=True)
               for name, buffer in model.named_buffers()}
    model.to_empty(device=device)  # this rank's shards only (and empty buffers)
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            buffer.copy_(buffers[name])
    family.initialize(model, spec, seed=seed)
    scale_init(model, role_table(spec), hparams)  # the readout's τ, as in the unsharded run
    return model


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Inside, every parameter a module registers is moved to the meta device as it is
    registered (its values are placeholders: the µP init replaces them), while buffers stay
    as made. Accelerate's ``init_empty_weights(include_buffers=False)`` does the same, for
    the same reason (buffers computed in ``__init__``). A layer's own init then runs on meta
    tensors, at no cost; the ``torch.empty`` a layer allocates first is freed at once."""
    register = nn.Module.register_parameter

    def on_meta(module: nn.Module, name: str, parameter: nn.Parameter | None) -> None:
        register(module, name, parameter)
        if parameter is not None and parameter.device.type != "meta":
            module._parameters[name] = nn.Parameter(parameter.to("meta"),
                                                    requires_grad=parameter.requires_grad)

    nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def shard_elements(roles: RoleTable, ranks: int) -> int:
    """Parameter elements one of ``ranks`` FSDP2 ranks holds at the most: each tensor's
    first dimension is padded to a multiple of ``ranks`` and split evenly."""
    return sum(math.ceil(row.shape[0] / ranks) * math.prod(row.shape[1:]) if row.shape else 1
               for row in roles)


def local_bytes(model: nn.Module) -> int:
    """Bytes of parameter storage this rank holds: a sharded parameter's padded local
    shard (what FSDP2 allocates), or a whole tensor."""
    total = 0
    for parameter in model.parameters():
        local = parameter.to_local() if hasattr(parameter, "to_local") else parameter
        total += local.untyped_storage().nbytes()
    return total

"""The µP table applied to a model's tensors: declaring them, their init, their param groups.

Every hptransfer module that owns parameters subclasses :class:`Declared`; the functions
below walk a model's declared parameters in creation order and take every number from
:mod:`hptransfer.mup.rules`. Nothing is attached to the tensors themselves: tensor attributes
are lost by FSDP and torch.compile (a known microsoft/mup problem).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hptransfer.errors import ConfigError
from hptransfer.hparams import HParams
from hptransfer.mup.roles import Declaration, Role, RoleTable, TensorRole
from hptransfer.mup.rules import (
    eps,
    init_kind,
    init_multiplier,
    init_std,
    lr_multiplier,
    weight_decay,
)
from hptransfer.spec import ModelSpec

__all__ = ["Declared", "TensorRule", "declared_parameters", "initialize", "param_groups",
           "scale_init", "tensor_rules"]


class Declared(nn.Module):
    """Base for every hptransfer module that owns parameters: each is created through
    :meth:`declare`, which records its role in ``self.declarations``."""

    def __init__(self) -> None:
        super().__init__()
        self.declarations: dict[str, Declaration] = {}

    def declare(self, name: str, shape: tuple[int, ...], declaration: Declaration
                ) -> nn.Parameter:
        # Values are placeholders; initialize() sets them from the table.
        parameter = nn.Parameter(torch.empty(shape))
        self.register_parameter(name, parameter)
        self.declarations[name] = declaration
        return parameter


def declared_parameters(model: nn.Module
                        ) -> Iterator[tuple[str, nn.Parameter, Declaration]]:
    """(qualified name, parameter, declaration) in creation order; refuses a parameter
    without a declared role."""
    for module_name, module in model.named_modules():
        declarations = getattr(module, "declarations", {})
        for name, parameter in module.named_parameters(recurse=False):
            qualified = f"{module_name}.{name}" if module_name else name
            if name not in declarations:
                raise TypeError(
                    f"parameter {qualified!r} of {type(module).__name__} has no µP role; "
                    f"create it with Declared.declare(name, shape, Declaration(role=...)) so "
                    f"hptransfer knows how to initialise and scale it")
            yield qualified, parameter, declarations[name]


@dataclass(frozen=True)
class TensorRule:
    """The numbers the table gives one parameter tensor (what ``hptransfer describe`` shows)."""

    name: str
    role: Role
    shape: tuple[int, ...]
    fan_in: int
    init: str  # "normal", "zeros" or "ones"
    init_std: float  # of the normal init; 0 for zeros and ones
    lr_multiplier: float
    weight_decay: float  # the λ handed to the optimizer for this tensor
    eps: float

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "role": self.role.value, "shape": list(self.shape),
                "fan_in": self.fan_in, "init": self.init, "init_std": self.init_std,
                "lr_multiplier": self.lr_multiplier, "weight_decay": self.weight_decay,
                "eps": self.eps}


def _rows(model: nn.Module, roles: RoleTable) -> list[tuple[TensorRole, nn.Parameter]]:
    """Each parameter of ``model`` with its row, in the model's order; a model that is not
    the one the table describes is refused."""
    parameters = dict(model.named_parameters())
    if list(parameters) != [row.name for row in roles]:
        extra = sorted(set(parameters) - {row.name for row in roles})
        missing = sorted({row.name for row in roles} - set(parameters))
        raise ConfigError(
            f"the model's parameters are not the role table's (not in the table: "
            f"{extra[:5] or 'none'}; missing from the model: {missing[:5] or 'none'}): build "
            f"the model the table was made for (same family and spec)")
    wrong = [f"{row.name} {list(parameters[row.name].shape)} vs {list(row.shape)}"
             for row in roles if tuple(parameters[row.name].shape) != row.shape]
    if wrong:
        raise ConfigError(f"the model's shapes are not the role table's ({', '.join(wrong[:5])}"
                          f"): it was built at another width or depth")
    return [(row, parameters[row.name]) for row in roles]


def tensor_rules(roles: RoleTable, spec: ModelSpec, hparams: HParams | None = None
                 ) -> list[TensorRule]:
    """The table's numbers for every row of ``roles``, in the model's order."""
    hparams = hparams or HParams()
    return [
        TensorRule(name=row.name, role=row.role, shape=row.shape, fan_in=row.fan_in,
                   init=init_kind(row, spec),
                   init_std=init_std(row, spec) * init_multiplier(row, hparams),
                   lr_multiplier=lr_multiplier(row, spec, hparams),
                   weight_decay=weight_decay(row, spec, hparams), eps=eps(row, spec, hparams))
        for row in roles
    ]


@torch.no_grad()
def initialize(model: nn.Module, roles: Mapping[str, Declaration | TensorRole] | RoleTable,
               spec: ModelSpec, generator: torch.Generator) -> None:
    """Initialise every parameter of ``model`` from its role, in the model's parameter
    order, from ``generator`` (gains to one, zero-std roles to zero, the rest normal).

    A model sharded before its init (FSDP2 from the meta device:
    :mod:`hptransfer.training.shards`) gets the same numbers as the unsharded one: each
    rank holds DTensor shards, and draws every tensor whole (:func:`_normal`)."""
    for name, parameter in model.named_parameters():
        row = roles[name]
        if row.role is Role.GAIN:
            parameter.fill_(1.0)
            continue
        std = init_std(row, spec)
        if std == 0.0:
            parameter.zero_()
        else:
            _normal(parameter, std, generator)


def _normal(parameter: torch.Tensor, std: float, generator: torch.Generator) -> None:
    """``parameter.normal_(0, std)`` from ``generator``; for a DTensor shard, this rank's
    part of exactly the tensor the unsharded init draws.

    Why draw the whole tensor: a CPU generator's normal numbers depend on the tensor's size
    (torch fills blocks of 16 and redraws a ragged tail), so a rank cannot draw its rows
    alone and match. Every rank draws each tensor whole on the CPU, in the same order (the
    generator stays in step on every rank), keeps its own rows and frees the rest: one
    tensor at a time in host memory, never the model; the device only ever holds shards."""
    from torch.distributed.tensor import DTensor

    if not isinstance(parameter, DTensor):
        parameter.normal_(0.0, std, generator=generator)
        return
    whole = torch.empty(parameter.shape, dtype=parameter.dtype)
    whole.normal_(0.0, std, generator=generator)
    local = parameter.to_local()
    local.copy_(_shard_of(whole, parameter))


def _shard_of(whole: torch.Tensor, parameter: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``whole`` under ``parameter``'s placements: FSDP2 shards dim 0
    like ``torch.chunk`` (the last ranks may hold fewer rows, or none)."""
    from torch.distributed.tensor import Replicate, Shard

    mesh = parameter.device_mesh
    coordinate = mesh.get_coordinate()
    part = whole
    for axis, placement in enumerate(parameter.placements):
        if isinstance(placement, Replicate):
            continue
        if type(placement) is not Shard:  # (a strided or partial placement: not FSDP2's 1-D)
            raise ConfigError(f"cannot initialise a parameter placed as {placement}: hptransfer "
                              f"shards with FSDP2 over one mesh dimension")
        chunks = part.chunk(mesh.size(axis), dim=placement.dim)
        index = coordinate[axis]
        part = (chunks[index] if index < len(chunks)
                else part.narrow(placement.dim, 0, 0))
    return part


@torch.no_grad()
def scale_init(model: nn.Module, roles: RoleTable, hparams: HParams) -> None:
    """Multiply each freshly initialised tensor of ``model`` by its module's init multiplier
    from ``hparams`` (the readout's τ; :func:`hptransfer.mup.rules.init_multiplier`).
    A model's own build knows only its spec; the multipliers are hparams of a run, so they
    are applied here, once, before training. A no-op at the default multipliers."""
    for row, parameter in _rows(model, roles):
        factor = init_multiplier(row, hparams)
        if factor != 1.0:
            parameter.mul_(factor)


def param_groups(model: nn.Module, roles: RoleTable, spec: ModelSpec, hparams: HParams
                 ) -> list[dict[str, Any]]:
    """Optimizer param groups of ``model``: one per distinct (LR, λ, ε) of its role table,
    with absolute ``lr`` values, ready for ``torch.optim.AdamW(groups)``.

    Under SP (or µP at base width with no weight decay) this is a single group, which is
    what makes the base-width identity exact.
    """
    groups: dict[tuple[float, float, float], list[nn.Parameter]] = {}
    for row, parameter in _rows(model, roles):
        key = (hparams.lr * lr_multiplier(row, spec, hparams), weight_decay(row, spec, hparams),
               eps(row, spec, hparams))
        groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": wd, "eps": e}
            for (lr, wd, e), params in groups.items()]

"""All µP arithmetic: init scale, per-tensor LR, weight decay and ε for every parameter role.

Modules never compute a width-dependent factor themselves. Each module *declares* the role
of every parameter it creates (:class:`Declaration`, through :meth:`Declared.declare`); this
module turns (role, fan-in, spec, hparams) into numbers. The table, Lingle's relative rule
(Tensor Programs V Table 3 with base width M₀, m = M / M₀; SPEC §2):

=========== ================== ============ ======================= ==================
role        init std           LR, SP       LR, µP (relative)       LR, µP (absolute)
=========== ================== ============ ======================= ==================
embedding   1                  α            α                       α
hidden      1/√fan_in (or 0)   α            α / m                   α / fan_in
readout     1/M (µP), 1/√M     α            α / m                   α / fan_in
            (SP), or 0
gain        1 (ones)           α            α                       α
bias        0 (zeros)          α            α                       α
=========== ================== ============ ======================= ==================

Forward multipliers: attention logits q·kᵀ·(1/D) under µP (1/√D under SP). At m = 1 every
width-dependent factor above is exactly 1.0, so a µP model at its base width trains bit for
bit like the same architecture and inits with one global LR (tested).

Depth (SPEC §4): under ``depth_rule=completep`` each residual branch is multiplied by L₀/L
(:func:`residual_multiplier`; exactly 1.0 at L = L₀). For Adam at CompleteP's α = 1 no LR
and no init changes with depth (Dey et al. 2025 scale hidden LRs by (L/L₀)^(α−1) = 1);
under ``eps_rule=scaled`` the ε of hidden matrices, which all sit inside residual branches,
takes the factor L₀/L too, as their gradients shrink by it.

This is Lingle's formulation (readout LR scaled, no readout forward multiplier); records
store it as :data:`FORMULATION`. microsoft/mup's equivalent form (width-independent readout
init, forward multiplier 1/m, readout LR α) is not used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any

import torch
from torch import nn

from hptransfer.hparams import EpsRule, HParams, WeightDecay
from hptransfer.spec import AttentionScale, DepthRule, ModelSpec, Parametrization, ReadoutInit

__all__ = [
    "FORMULATION",
    "Declaration",
    "Declared",
    "Role",
    "TensorRule",
    "attention_scale",
    "initialize",
    "param_groups",
    "residual_multiplier",
    "tensor_rules",
]

FORMULATION = "lingle: readout init std 1/M, readout LR scaled like hidden, no output multiplier"


class Role(str, Enum):
    """What a parameter is, as far as µP is concerned."""

    EMBEDDING = "embedding"  # input-like: finite fan-in (one-hot), width-sized fan-out
    HIDDEN = "hidden"  # width × width-like matrix
    READOUT = "readout"  # output-like: width-sized fan-in, finite fan-out
    GAIN = "gain"  # norm gain vector or scalar, initialised to one
    BIAS = "bias"  # bias vector, initialised to zero

    @property
    def is_matrix(self) -> bool:
        return self in (Role.EMBEDDING, Role.HIDDEN, Role.READOUT)


@dataclass(frozen=True)
class Declaration:
    """A module's statement about one of its parameters.

    ``fan_in`` is the input dimension of a matrix (what its rows are dotted with);
    ``zero_init`` asks for a zero init regardless of role (zero-init query, SPEC §1).
    """

    role: Role
    fan_in: int = 1
    zero_init: bool = False


class Declared(nn.Module):
    """Base for every hptransfer module that owns parameters.

    Parameters are created through :meth:`declare`, which records their role in
    ``self.declarations``. Nothing is attached to the tensors themselves: tensor attributes
    are lost by FSDP and torch.compile (a known microsoft/mup problem).
    """

    def __init__(self) -> None:
        super().__init__()
        self.declarations: dict[str, Declaration] = {}

    def declare(self, name: str, shape: tuple[int, ...], declaration: Declaration
                ) -> nn.Parameter:
        # Values are placeholders; :func:`initialize` sets them from the table.
        parameter = nn.Parameter(torch.empty(shape))
        self.register_parameter(name, parameter)
        self.declarations[name] = declaration
        return parameter


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


def attention_scale(spec: ModelSpec) -> float:
    """Multiplier of q·kᵀ: 1/D (µP, width-independent because D is fixed) or 1/√D."""
    if spec.attention_scale is AttentionScale.INV_D:
        return 1.0 / spec.head_dim
    return 1.0 / math.sqrt(spec.head_dim)


def residual_multiplier(spec: ModelSpec) -> float:
    """Multiplier of every residual branch: 1, or L₀/L under CompleteP (α = 1).

    L₀/L keeps each block's contribution to the residual stream, and so its feature
    update, Θ(1/L): the sum over L blocks stays Θ(1) and the LR optimum stops moving with
    depth (Dey et al. 2025, arXiv 2505.01618). Exactly 1.0 at L = L₀.
    """
    if spec.depth_rule is DepthRule.COMPLETEP:
        return spec.base_depth / spec.depth
    return 1.0


def init_std(declaration: Declaration, spec: ModelSpec) -> float:
    """Standard deviation of the normal init (gains are ones, biases zeros: std 0)."""
    role = declaration.role
    if declaration.zero_init or role in (Role.GAIN, Role.BIAS):
        return 0.0
    if role is Role.EMBEDDING:
        return 1.0
    if role is Role.HIDDEN:
        return 1.0 / math.sqrt(declaration.fan_in)
    # Readout: var 1/M² under µP keeps logits Θ(1) after the first update while the init
    # contribution vanishes like 1/√M; SP's var 1/M keeps them Θ(1) at init.
    if spec.readout_init is ReadoutInit.ZERO:
        return 0.0
    if spec.readout_init is ReadoutInit.MUP:
        return 1.0 / declaration.fan_in
    return 1.0 / math.sqrt(declaration.fan_in)


def lr_multiplier(declaration: Declaration, spec: ModelSpec) -> float:
    """Per-tensor LR as a multiple of the base LR α."""
    if spec.param is Parametrization.SP or declaration.role not in (Role.HIDDEN,
                                                                     Role.READOUT):
        return 1.0
    if spec.param is Parametrization.MUP:
        # m is exactly 1.0 at base width, so this division is exact there.
        return 1.0 / spec.width_multiplier
    return 1.0 / declaration.fan_in  # MUP_ABS


def weight_decay(declaration: Declaration, spec: ModelSpec, hparams: HParams) -> float:
    """The λ to hand the optimizer so the per-step decay follows ``hparams.weight_decay_rule``.

    PyTorch's AdamW (and our Lion) decay a tensor by lr_tensor(t)·λ_tensor per step, with
    lr_tensor(t) = s(t)·α·multiplier. Solving for λ_tensor gives the three conventions of
    SPEC §3. Gains and biases are never decayed.
    """
    if not declaration.role.is_matrix or hparams.weight_decay == 0:
        return 0.0
    multiplier = lr_multiplier(declaration, spec)
    rule = hparams.weight_decay_rule
    if rule is WeightDecay.COUPLED:
        return hparams.weight_decay
    if rule is WeightDecay.COUPLED_SCALED:
        return hparams.weight_decay / multiplier
    return hparams.weight_decay / (hparams.lr * multiplier)  # INDEPENDENT


def eps(declaration: Declaration, spec: ModelSpec, hparams: HParams) -> float:
    if hparams.eps_rule is EpsRule.CONSTANT:
        return hparams.eps
    depth = residual_multiplier(spec) if declaration.role is Role.HIDDEN else 1.0
    return hparams.eps * lr_multiplier(declaration, spec) * depth


def _init_kind(declaration: Declaration, spec: ModelSpec) -> str:
    if declaration.role is Role.GAIN:
        return "ones"
    return "normal" if init_std(declaration, spec) > 0 else "zeros"


def _declared_parameters(model: nn.Module):
    """Yield (qualified name, parameter, declaration); refuse undeclared parameters."""
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


def tensor_rules(model: nn.Module, spec: ModelSpec, hparams: HParams | None = None
                 ) -> list[TensorRule]:
    """The table's numbers for every parameter of ``model``, in creation order."""
    hparams = hparams or HParams()
    return [
        TensorRule(name=name, role=decl.role, shape=tuple(p.shape), fan_in=decl.fan_in,
                   init=_init_kind(decl, spec), init_std=init_std(decl, spec),
                   lr_multiplier=lr_multiplier(decl, spec),
                   weight_decay=weight_decay(decl, spec, hparams),
                   eps=eps(decl, spec, hparams))
        for name, p, decl in _declared_parameters(model)
    ]


@torch.no_grad()
def initialize(model: nn.Module, spec: ModelSpec, generator: torch.Generator) -> None:
    """Initialise every parameter from the table, in creation order, from ``generator``."""
    for _, parameter, decl in _declared_parameters(model):
        if decl.role is Role.GAIN:
            parameter.fill_(1.0)
            continue
        std = init_std(decl, spec)
        if std == 0.0:
            parameter.zero_()
        else:
            parameter.normal_(0.0, std, generator=generator)


def param_groups(model: nn.Module, spec: ModelSpec, hparams: HParams) -> list[dict[str, Any]]:
    """Optimizer param groups: one per distinct (LR, λ, ε), with absolute ``lr`` values.

    Under SP (or µP at base width with no weight decay) this is a single group, which is
    what makes the base-width identity exact.
    """
    groups: dict[tuple[float, float, float], list[nn.Parameter]] = {}
    for _, parameter, decl in _declared_parameters(model):
        key = (hparams.lr * lr_multiplier(decl, spec), weight_decay(decl, spec, hparams),
               eps(decl, spec, hparams))
        groups.setdefault(key, []).append(parameter)
    return [{"params": params, "lr": lr, "weight_decay": wd, "eps": e}
            for (lr, wd, e), params in groups.items()]

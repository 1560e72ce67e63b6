"""What each parameter is, as far as µP is concerned: its role, declared by its module.

A module that owns parameters subclasses :class:`~hptransfer.mup.tensors.Declared` and
creates each one with a :class:`Declaration` (role, fan-in, zero init). The numbers (init
std, per-tensor LR, weight decay, ε) come from :mod:`hptransfer.mup.rules`, never from the
module. Roles are never guessed from names: a renamed layer cannot silently lose µP.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Declaration", "Role"]


class Role(str, Enum):
    """A parameter's place in the µP table (docs/parametrization.md)."""

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
    ``zero_init`` asks for a zero init regardless of role (zero-init query, docs/spec.md §1).
    """

    role: Role
    fan_in: int = 1
    zero_init: bool = False

"""What each parameter is, as far as µP is concerned: its role, declared by its module.

A module that owns parameters subclasses :class:`~hptransfer.mup.tensors.Declared` and
creates each one with a :class:`Declaration` (role, fan-in, zero init). The numbers (init
std, per-tensor LR, weight decay, ε) come from :mod:`hptransfer.mup.rules`, never from the
module. Roles are never guessed from names: a renamed layer cannot silently lose µP.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["Declaration", "Role", "RoleTable", "TensorRole"]


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


@dataclass(frozen=True)
class TensorRole:
    """One row of a role table: a parameter's role, its fan-in at this width and at the
    base width (where µP equals SP), and whether it starts at zero."""

    name: str
    role: Role
    shape: tuple[int, ...]
    fan_in: int
    base_fan_in: int
    zero_init: bool = False
    source: str = "declared"  # how the role was found: declared, a pattern, inferred

    def as_dict(self) -> dict:
        return {"name": self.name, "role": self.role.value, "shape": list(self.shape),
                "fan_in": self.fan_in, "base_fan_in": self.base_fan_in,
                "zero_init": self.zero_init, "source": self.source}


@dataclass(frozen=True)
class RoleTable:
    """Every parameter of a model with its role, in the model's parameter order.

    Kept beside the model rather than on its tensors, so FSDP, torch.compile and
    checkpoints cannot drop it. :meth:`digest` identifies it in a study's record.
    """

    rows: tuple[TensorRole, ...]

    def __getitem__(self, name: str) -> TensorRole:
        return self._by_name()[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name()

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def _by_name(self) -> dict[str, TensorRole]:
        cached = self.__dict__.get("_index")
        if cached is None:
            cached = {row.name: row for row in self.rows}
            object.__setattr__(self, "_index", cached)
        return cached

    def digest(self) -> str:
        """``sha256:`` of the table at its widths (names, roles, shapes, fan-ins, zero
        inits): a changed model or a changed role refuses to resume a study."""
        import hashlib
        import json

        rows = [{k: v for k, v in row.as_dict().items() if k != "source"} for row in self.rows]
        text = json.dumps(rows, sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(text.encode()).hexdigest()

"""Which family a spec names, and the model and role table it gives.

``ModelSpec.model`` is ``builtin``, ``hf-llama`` / ``hf-gpt2``, a factory target
(``file.py:fn``, ``package.module:fn``) or an ``hptransfer.models`` entry point; each name
resolves to one family object per process, imported on first use.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from hptransfer.models.family import BuiltinFamily, ModelFamily, table_of
from hptransfer.spec import ModelSpec

if TYPE_CHECKING:
    from torch import nn

    from hptransfer.hparams import HParams
    from hptransfer.mup.roles import RoleTable

__all__ = ["build_model", "family_of", "role_table"]


@functools.lru_cache(maxsize=64)
def _family(name: str) -> ModelFamily:
    if name == BuiltinFamily.name:
        return BuiltinFamily()
    if name.startswith("hf-"):
        from hptransfer.models.hf import hf_family

        return hf_family(name)
    from hptransfer.models.factory import factory_family

    return factory_family(name)


def family_of(spec: ModelSpec) -> ModelFamily:
    """The family ``spec.model`` names (one instance per name in this process)."""
    return _family(spec.model)


def role_table(spec: ModelSpec) -> RoleTable:
    """The role table of ``spec``'s model: every parameter's role, fan-in and base fan-in."""
    return table_of(family_of(spec), spec)


def build_model(spec: ModelSpec, *, seed: int = 0, hparams: HParams | None = None
                ) -> nn.Module:
    """``spec``'s model, checked, configured and initialised from ``seed``; with
    ``hparams``, its per-module init multipliers applied (the readout's τ)."""
    family = family_of(spec)
    family.check(spec)
    model = family.build(spec, seed=seed)
    if hparams is not None:
        from hptransfer.mup.tensors import scale_init

        scale_init(model, role_table(spec), hparams)
    return model

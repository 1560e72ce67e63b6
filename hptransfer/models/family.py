"""The model seam: what hptransfer needs from a model to parametrize, train and tune it.

A :class:`ModelFamily` makes its model at a :class:`~hptransfer.spec.ModelSpec` (width,
depth, head dim, vocabulary, sequence length), says how its parameters' µP roles are found
(:mod:`hptransfer.mup.sources`), applies what a role table cannot express (the attention
logit scale, a depth rule), counts its training FLOPs per token, and names the modules a
coord check probes. Everything else — the role table, the µP init, the optimizer groups,
the training loop — is the same for every family. ``ModelSpec.model`` names the family
(:func:`hptransfer.models.registry.family_of`): ``builtin`` (:class:`BuiltinFamily`),
``hf-llama`` and ``hf-gpt2`` (:mod:`hptransfer.models.hf`), or a factory of the user's
(:mod:`hptransfer.models.factory`).
"""

from __future__ import annotations

import functools
import math
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from hptransfer.errors import ConfigError
from hptransfer.mup.roles import Role, RoleTable
from hptransfer.mup.sources import logits_of  # (re-exported: what a model's forward returns)
from hptransfer.spec import (
    Activation,
    Bias,
    Compilation,
    EmbeddingNorm,
    ModelSpec,
    NormGain,
    Precision,
    QueryInit,
    RoleSource,
)

if TYPE_CHECKING:
    from torch import nn

    from hptransfer.mup.sources import Assigner

__all__ = ["BUILTIN_ONLY", "BuiltinFamily", "ModelFamily", "auto_assigner", "logits_of",
           "table_of"]

# ModelSpec fields that describe the built-in model's architecture: another family has its
# own, so a non-default value there is refused rather than silently ignored
BUILTIN_ONLY = {"norm_gain": NormGain.NONE, "embedding_norm": EmbeddingNorm.NONE,
                "bias": Bias.NONE, "query_init": QueryInit.NORMAL,
                "activation": Activation.RELU}


class ModelFamily(ABC):
    """One kind of model hptransfer can parametrize. Subclasses implement :meth:`make` and
    :meth:`flops_per_token`; the rest has a reference implementation to override."""

    #: what ``ModelSpec.model`` says for this family
    name: str = ""

    @abstractmethod
    def make(self, spec: ModelSpec) -> nn.Module:
        """The model at ``spec``, parameters allocated (their values do not matter: the µP
        init replaces them). Must work under ``torch.device("meta")``."""

    @abstractmethod
    def flops_per_token(self, spec: ModelSpec) -> float:
        """Training FLOPs per token: 3 × (forward matmuls + attention), Kaplan's convention."""

    def check(self, spec: ModelSpec) -> None:
        """Refuse, with the fix, a spec this family cannot build as asked."""
        changed = [name for name, default in BUILTIN_ONLY.items()
                   if getattr(spec, name) is not default]
        if changed:
            options = ", ".join("--" + n.replace("_", "-") for n in changed)
            raise ConfigError(f"{options} describe hptransfer's built-in model; the "
                              f"{self.name} model has its own architecture: leave them at "
                              f"their defaults, or use --model builtin")

    def assigner(self, spec: ModelSpec) -> Assigner:
        """How this family's roles are found (``spec.roles``; AUTO: declared if every
        parameter is declared, else inferred from shapes)."""
        from hptransfer.mup.sources import declared, inferred

        if spec.roles is RoleSource.DECLARED:
            return declared
        if spec.roles is RoleSource.PATTERNS:
            raise ConfigError(f"the {self.name} model has no pattern table: use --roles "
                              f"inferred or declared")
        if spec.roles is RoleSource.INFERRED:
            return inferred
        return auto_assigner(inferred)

    def configure(self, model: nn.Module, spec: ModelSpec) -> None:
        """Apply to a made model what a role table cannot express (attention scale, depth
        rule); raise :class:`ConfigError` for what it cannot apply. Default: nothing."""
        return None

    def limitations(self, spec: ModelSpec) -> tuple[str, ...]:
        """What of ``spec`` this family could not apply, in words (each becomes a
        prediction warning); empty when everything applied."""
        return ()

    def build(self, spec: ModelSpec, *, seed: int = 0) -> nn.Module:
        """The model at ``spec`` with its µP (or SP) init from ``seed``, on the CPU."""
        model = self.make(spec)
        self.configure(model, spec)
        self.initialize(model, spec, seed=seed)
        return model

    def initialize(self, model: nn.Module, spec: ModelSpec, *, seed: int = 0) -> None:
        """Set every parameter of a made model to its µP (or SP) init from ``seed``: the
        same numbers whether ``model`` is whole or FSDP2-sharded (:meth:`parallelize`;
        :func:`hptransfer.mup.tensors.initialize` draws each sharded tensor whole)."""
        import torch

        from hptransfer.mup.tensors import initialize

        initialize(model, table_of(self, spec), spec, torch.Generator().manual_seed(seed))

    def parallelize(self, model: nn.Module, mesh: Any, *,
                    precision: Precision = Precision.FP32,
                    compilation: Compilation = Compilation.EAGER) -> None:
        """Shard ``model`` over the 1-D device ``mesh`` with FSDP2, in place (the model may
        still be on the meta device: :mod:`hptransfer.training.shards`), with bf16 compute
        when ``precision`` says so and each block compiled when ``compilation`` does
        (:func:`~hptransfer.models.sharding.shard_blocks`). Default: every element of every
        ``nn.ModuleList`` (a transformer's blocks) is one FSDP unit, then the root; a family
        whose blocks live elsewhere overrides it."""
        from hptransfer.models.sharding import shard_blocks

        shard_blocks(model, mesh, blocks=None, precision=precision, compilation=compilation)

    def probes(self, model: nn.Module, roles: RoleTable) -> dict[str, list[nn.Module]]:
        """The modules whose outputs a coord check records, by name (``logits``: the
        network output). Default: the modules that own the embedding, hidden and readout
        parameters."""
        owners: dict[str, list[nn.Module]] = {"embedding": [], "hidden": [], "logits": []}
        modules = dict(model.named_modules())
        kind = {Role.EMBEDDING: "embedding", Role.HIDDEN: "hidden", Role.READOUT: "logits"}
        for row in roles:
            if row.role in kind:
                module = modules[row.name.rpartition(".")[0]]
                if module not in owners[kind[row.role]]:
                    owners[kind[row.role]].append(module)
        return {name: found for name, found in owners.items() if found}

    def parameter_count(self, spec: ModelSpec, *, embedding: bool = False) -> int:
        """Trainable parameters, non-embedding unless ``embedding`` (the readout counts as
        non-embedding, as in Kaplan et al. and Step Law)."""
        return sum(math.prod(row.shape) for row in table_of(self, spec)
                   if embedding or row.role is not Role.EMBEDDING)

    def describe(self) -> dict[str, Any]:
        """What a record says about the family (beside the spec, which names it)."""
        return {"family": self.name}


def auto_assigner(fallback: Assigner) -> Assigner:
    """Declared roles when every parameter has one, else ``fallback``."""
    from hptransfer.mup.sources import declared
    from hptransfer.mup.tensors import Declared

    def assign(model: nn.Module, wider: nn.Module | None = None):
        owners = [m for m in model.modules() if any(True for _ in
                                                    m.named_parameters(recurse=False))]
        if owners and all(isinstance(m, Declared) for m in owners):
            return declared(model)
        return fallback(model, wider)

    return assign


class BuiltinFamily(ModelFamily):
    """hptransfer's own :class:`~hptransfer.models.transformer.Transformer`: every option of
    the spec applies, its modules declare their roles."""

    name = "builtin"

    def make(self, spec: ModelSpec) -> nn.Module:
        from hptransfer.models.transformer import Transformer

        return Transformer(spec)

    def check(self, spec: ModelSpec) -> None:
        if spec.roles not in (RoleSource.AUTO, RoleSource.DECLARED):
            raise ConfigError(f"the built-in model declares its roles; --roles "
                              f"{spec.roles.value} applies to other models")

    def assigner(self, spec: ModelSpec) -> Assigner:
        from hptransfer.mup.sources import declared

        return declared

    def build(self, spec: ModelSpec, *, seed: int = 0) -> nn.Module:
        from hptransfer.models.transformer import Transformer

        return Transformer(spec, seed=seed)  # it initialises itself from its declarations

    def initialize(self, model: nn.Module, spec: ModelSpec, *, seed: int = 0) -> None:
        from hptransfer.models.transformer import initialize_transformer

        initialize_transformer(model, spec, seed=seed)

    def parallelize(self, model: nn.Module, mesh: Any, *,
                    precision: Precision = Precision.FP32,
                    compilation: Compilation = Compilation.EAGER) -> None:
        from hptransfer.models.transformer import parallelize

        parallelize(model, mesh, precision=precision, compilation=compilation)

    def flops_per_token(self, spec: ModelSpec) -> float:
        return spec.flops_per_token()

    def parameter_count(self, spec: ModelSpec, *, embedding: bool = False) -> int:
        return spec.parameter_count(embedding=embedding)

    def probes(self, model: nn.Module, roles: RoleTable) -> dict[str, list[nn.Module]]:
        from hptransfer.models import transformer as t

        kinds = {t.TokenEmbedding: "embedding", t.Attention: "attention", t.MLP: "mlp",
                 t.Block: "block", t.Readout: "logits"}
        found: dict[str, list[nn.Module]] = {}
        for module in model.modules():
            if type(module) in kinds:
                found.setdefault(kinds[type(module)], []).append(module)
        return found


def _wider(spec: ModelSpec) -> ModelSpec:
    """A width that differs from both ``spec``'s and its base: which dimensions grow."""
    width = 2 * max(spec.width, spec.base_width)
    return ModelSpec(**{**spec.model_dump(), "width": width})


@functools.lru_cache(maxsize=256)
def _table(family: ModelFamily, spec_json: str) -> RoleTable:
    import torch

    from hptransfer.mup.sources import role_table as assemble

    spec = ModelSpec.model_validate_json(spec_json)
    family.check(spec)
    base = ModelSpec(**{**spec.model_dump(), "width": spec.base_width})
    with torch.device("meta"):  # shapes only: no memory, whatever the width
        model, base_model, wider = (family.make(s) for s in (spec, base, _wider(spec)))
    return assemble(model, base_model, wider, family.assigner(spec))


def table_of(family: ModelFamily, spec: ModelSpec) -> RoleTable:
    """The role table of ``family``'s model at ``spec`` (cached per family and spec)."""
    return _table(family, spec.model_dump_json())

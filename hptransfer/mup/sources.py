"""A model's role table, three ways: declared by its modules, a pattern table, or inferred.

- **Declared**: hptransfer's own modules create every parameter through
  :meth:`~hptransfer.mup.tensors.Declared.declare`.
- **Patterns**: ``{"lm_head.weight": "readout", "*.mlp.*.weight": "hidden", ...}``, matched
  against full parameter names (:mod:`fnmatch`); a parameter no pattern matches, or that two
  patterns match, is an error, so a renamed layer cannot silently lose µP. A role may carry
  ``:zero`` (``"hidden:zero"``) for a zero init.
- **Inferred**: the model built at two widths (on the ``meta`` device, no memory): the
  dimensions that grow are infinite (microsoft/mup's base shapes, kept in a table instead of
  on the tensors). Infinite × infinite → hidden; infinite fan-out, finite fan-in →
  embedding; infinite fan-in, finite fan-out → readout for the matrix that maps to the
  logits (:func:`output_matrix`: traced from the model's output), hidden for any other (a
  k/v projection with fixed kv heads: hptransfer's choice, docs/spec.md §9); a norm's 1-D
  ``weight`` → gain, a 1-D ``bias`` → bias.

Fan-in comes from the module type: ``nn.Linear`` and HF ``Conv1D`` (weight stored
(fan_in, fan_out)) know theirs; an ``nn.Embedding``'s input is the one-hot row; any other
2-D parameter is taken as (fan_out, fan_in) like ``nn.Linear``. The table's base fan-ins
come from the same model built at its base width. Tied parameters (one tensor under two
names) with different roles are refused with the fix, and so is any table without a
readout (an output computed from the embedding, ``logits = h @ wte.weight.T``, has none)
or a model none of whose parameters changes size with width (a factory that ignores
``width``): µP would be applied to a model it does not describe.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hptransfer.errors import ConfigError
from hptransfer.mup.roles import Declaration, Role, RoleTable, TensorRole

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Assigner", "declared", "fan_in_dim", "from_patterns", "inferred", "logits_of",
           "output_matrix", "role_table", "tied_names"]

# what assigns roles: a model (and, for inference, the same model wider) → name → role
Assigner = Callable[["nn.Module", "nn.Module"], Mapping[str, Declaration]]
_LIST = 12  # names listed in an error before "… and N more"


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST])
    return shown + (f" … and {len(names) - _LIST} more" if len(names) > _LIST else "")


def _owners(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Parameter name → (the module that owns it, its attribute name), duplicates kept."""
    return {f"{prefix}.{attr}" if prefix else attr: (module, attr)
            for prefix, module in model.named_modules(remove_duplicate=False)
            for attr, _ in module.named_parameters(recurse=False, remove_duplicate=False)}


def fan_in_dim(module: nn.Module, attr: str, ndim: int) -> int | None:
    """Which dimension of a 2-D parameter is its fan-in (None for 1-D)."""
    if ndim < 2:
        return None
    if type(module).__name__ == "Conv1D":  # Hugging Face GPT-2: weight is (fan_in, fan_out)
        return 0
    from torch import nn

    if isinstance(module, nn.Embedding):  # the input is a one-hot row of the table
        return 0
    return 1  # nn.Linear and the torch convention: (fan_out, fan_in)


def declared(model: nn.Module, wider: nn.Module | None = None) -> dict[str, Declaration]:
    """The roles hptransfer's own modules declared (every parameter must have one)."""
    from hptransfer.mup.tensors import declared_parameters

    return {name: declaration for name, _, declaration in declared_parameters(model)}


def _parse_role(text: str | Role, pattern: str) -> tuple[Role, bool]:
    role, _, zero = (text.value if isinstance(text, Role) else str(text)).partition(":")
    try:
        parsed = Role(role.strip())
    except ValueError:
        raise ConfigError(f"role table: pattern {pattern!r} → {text!r} is not a role; use "
                          f"one of {', '.join(r.value for r in Role)} (optionally "
                          f"':zero' for a zero init)") from None
    if zero and zero.strip() != "zero":
        raise ConfigError(f"role table: {pattern!r} → {text!r}: the only suffix is ':zero'")
    return parsed, bool(zero)


def _fan_in(module: nn.Module, attr: str, shape: tuple[int, ...]) -> int:
    dim = fan_in_dim(module, attr, len(shape))
    return 1 if dim is None else shape[dim]


def _parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """Every parameter name, a tied tensor under each of its names."""
    return dict(model.named_parameters(remove_duplicate=False))


def from_patterns(patterns: Mapping[str, str | Role]) -> Assigner:
    """An assigner matching full parameter names against ``patterns`` (module docstring)."""
    parsed = {pattern: _parse_role(role, pattern) for pattern, role in patterns.items()}

    def assign(model: nn.Module, wider: nn.Module | None = None) -> dict[str, Declaration]:
        owners = _owners(model)
        roles, unmatched, doubly = {}, [], []
        for name, parameter in _parameters(model).items():
            hits = [p for p in parsed if fnmatch.fnmatchcase(name, p)]
            if not hits:
                unmatched.append(name)
            elif len(hits) > 1:
                doubly.append(f"{name} ({' and '.join(repr(h) for h in hits)})")
            else:
                role, zero = parsed[hits[0]]
                module, attr = owners[name]
                roles[name] = Declaration(role, _fan_in(module, attr, tuple(parameter.shape)),
                                          zero)
        problems = []
        if unmatched:
            problems.append(f"no pattern matches {_listing(unmatched)}")
        if doubly:
            problems.append(f"two patterns match {_listing(doubly)}")
        if problems:
            example = unmatched[0] if unmatched else doubly[0].split()[0]
            raise ConfigError(
                f"role table: {'; '.join(problems)}. Every parameter needs exactly one "
                f"role: add or narrow patterns, e.g. {{{example!r}: \"hidden\"}} (roles: "
                f"{', '.join(r.value for r in Role)})")
        return roles

    return assign


def inferred(model: nn.Module, wider: nn.Module) -> dict[str, Declaration]:
    """Roles from the dimensions that grow between ``model`` and ``wider`` (module
    docstring). ``wider`` must be the same model family at a larger width."""
    names, grown = _parameters(model), _parameters(wider)
    if list(names) != list(grown):
        changed = sorted(set(names) ^ set(grown))
        raise ConfigError(f"the model has other parameters at another width "
                          f"({_listing(changed)}): a width must change only the sizes of "
                          f"the same parameters, so that µP can scale each one")
    shapes = {n: (tuple(p.shape), tuple(grown[n].shape)) for n, p in names.items()}
    output = output_matrix(model)
    owners = _owners(model)
    roles, unknown = {}, []
    for name, (shape, other) in shapes.items():
        module, attr = owners[name]
        infinite = [a != b for a, b in zip(shape, other, strict=True)]
        role = _infer(module, attr, shape, infinite, name in output)
        if role is None:
            unknown.append(f"{name} {list(shape)}")
        else:
            roles[name] = Declaration(role, _fan_in(module, attr, shape))
    if unknown:
        raise ConfigError(
            f"cannot infer a µP role from the shapes of {_listing(unknown)}: give the model a "
            f"pattern table (ROLES = {{name pattern: role}} beside its factory, and "
            f"--roles patterns), e.g. {{{unknown[0].split()[0]!r}: \"hidden\"}}")
    if any(roles[n].role is Role.EMBEDDING for n in output if n in roles):
        raise ConfigError(_tied(output))
    return roles


def _infer(module: nn.Module, attr: str, shape: tuple[int, ...], infinite: list[bool],
           maps_to_logits: bool) -> Role | None:
    if len(shape) <= 1:
        if attr == "bias":
            return Role.BIAS
        if attr == "weight" and "norm" in type(module).__name__.lower():
            return Role.GAIN
        return None
    if len(shape) != 2:
        return None
    fan_in = fan_in_dim(module, attr, 2)
    fan_out = 1 - fan_in
    if infinite[fan_in] and infinite[fan_out]:
        return Role.HIDDEN
    if infinite[fan_out]:
        return Role.EMBEDDING
    if infinite[fan_in]:
        return Role.READOUT if maps_to_logits else Role.HIDDEN
    return None  # finite × finite: nothing scales, and no rule says how it should


# autograd nodes an output passes through unchanged in what it is computed from: a view, a
# cast, a slice, a scale by a constant or a parameter (a learned output multiplier)
_TRACE_DEPTH = 64


def output_matrix(model: nn.Module) -> set[str]:
    """The names of the matrix that maps to the model's logits: the readout.

    Traced, not guessed from shapes: a fixed output dimension is not a vocabulary (a k/v
    projection to a fixed number of heads has one too). The model runs one window of two
    tokens on the device its parameters are on (``meta``: no memory, no compute), and the
    logits' autograd graph is walked back through single-input steps (views, casts,
    scales) to the first matrix product; the 2-D parameter it multiplies by is the output
    matrix (every name of that tensor, tied names included). A Hugging Face model names it
    itself (``get_output_embeddings()``), as its forward cannot run on ``meta``. Raises
    :class:`ConfigError` with the fix when there is no such matrix: the forward does not
    run on meta tensors, or the logits are not one matrix applied to the last hidden state.
    """
    import torch

    by_tensor: dict[int, list[str]] = {}
    for name, parameter in _parameters(model).items():
        by_tensor.setdefault(id(parameter), []).append(name)
    named = getattr(model, "get_output_embeddings", None)
    head = named() if callable(named) else None
    if head is not None and isinstance(getattr(head, "weight", None), torch.nn.Parameter):
        return set(by_tensor.get(id(head.weight), ()))
    device = next((p.device for p in model.parameters()), torch.device("meta"))
    tokens = torch.zeros(1, 2, dtype=torch.long, device=device)
    try:
        with torch.enable_grad():
            logits = logits_of(model(tokens))
    except ConfigError:
        raise
    except Exception as error:  # data-dependent code (.item(), masks) does not run on meta
        raise ConfigError(
            f"cannot find the model's readout (the matrix that maps to the logits): its "
            f"forward does not run on meta tensors ({type(error).__name__}: "
            f"{' '.join(str(error).split())[:160]}); give the model a pattern table (ROLES = "
            f"{{name pattern: role}} beside its factory, e.g. {{\"lm_head.weight\": "
            f"\"readout\", ...}}) and --roles patterns") from None
    found = _product_parameter(logits.grad_fn, by_tensor)
    if found is None:
        raise ConfigError(
            "cannot find the model's readout: its logits are not one matrix applied to the "
            "last hidden state (no parameter multiplies it in the output's last step). µP "
            "needs that matrix as a parameter of its own: an output layer such as "
            "nn.Linear(width, vocab), or a pattern table (ROLES) naming it 'readout'")
    return set(found)


def logits_of(output: Any) -> torch.Tensor:
    """A model's logits (B, T, V): the output itself, or its ``.logits`` (Hugging Face)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    found = getattr(output, "logits", None)
    if isinstance(found, torch.Tensor):
        return found
    raise ConfigError(f"the model returned {type(output).__name__}, not logits: its forward "
                      f"must map token ids (B, T) to logits (B, T, V), or to an object "
                      f"with .logits as Hugging Face models return")


def _product_parameter(node, by_tensor: dict[int, list[str]]) -> list[str] | None:
    """Walk back from ``node`` through steps with one non-parameter input; at the first step
    that takes a 2-D parameter (directly or through a transpose or view), its names."""
    for _ in range(_TRACE_DEPTH):
        if node is None:
            return None
        inputs, parameters = [], []
        for child, _ in node.next_functions:
            if child is None:
                continue
            leaf = _leaf(child)
            if leaf is not None:
                parameters.append(leaf)
            else:
                inputs.append(child)
        matrices = [p for p in parameters if p.dim() == 2 and id(p) in by_tensor]
        if matrices:
            return by_tensor[id(matrices[0])]
        if len(inputs) != 1:
            return None  # two computed inputs (h @ E.T from two branches): no one matrix
        node = inputs[0]
    return None


def _leaf(node, steps: int = 3):
    """The parameter behind ``node`` if it is one, reached through at most ``steps``
    single-input nodes (a transpose, a view, a cast of a weight)."""
    for _ in range(steps + 1):
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
        if variable is not None:
            return variable
        children = [c for c, _ in node.next_functions if c is not None]
        if len(children) != 1:
            return None
        node = children[0]
    return None


def _tied(names) -> str:
    return (f"the logits are computed with {' and '.join(sorted(names))}, which is the "
            f"token embedding (tied weights), but µP treats an embedding and a readout "
            f"differently (init std, LR): untie them, e.g. config.tie_word_embeddings=False "
            f"for a Hugging Face model, or give the output layer its own nn.Parameter (in "
            f"nanoGPT, delete the line `self.transformer.wte.weight = self.lm_head.weight`; "
            f"instead of logits = h @ wte.weight.T, an nn.Linear(width, vocab))")


def tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that are one tensor (tied weights)."""
    by_tensor: dict[int, list[str]] = {}
    for name, parameter in _parameters(model).items():
        by_tensor.setdefault(id(parameter), []).append(name)
    return [names for names in by_tensor.values() if len(names) > 1]


def _check_ties(model: nn.Module, roles: Mapping[str, Declaration]) -> None:
    for names in tied_names(model):
        if len({roles[n].role for n in names if n in roles}) > 1:
            raise ConfigError(
                f"parameters {' and '.join(names)} are one tensor (tied weights), but µP "
                f"treats an embedding and a readout differently (init std, LR): untie them, "
                f"e.g. config.tie_word_embeddings=False for a Hugging Face model, or give the "
                f"output layer its own nn.Parameter (in nanoGPT, delete the line "
                f"`self.transformer.wte.weight = self.lm_head.weight`)")


def _check_scales(model: nn.Module, wider: nn.Module,
                  roles: Mapping[str, Declaration]) -> None:
    """A whole model µP can act on: some parameter grows with width, one is the readout."""
    if all(tuple(p.shape) == tuple(q.shape) for p, q in zip(
            _parameters(model).values(), _parameters(wider).values(), strict=False)):
        raise ConfigError(
            "no parameter of the model changes size with width (the model built at two "
            "widths has the same shapes): the factory ignores its width= argument, so every "
            "proxy would be the same model and µP would scale nothing; build the layers "
            "from width (e.g. nn.Linear(width, width))")
    if not any(d.role is Role.READOUT for d in roles.values()):
        raise ConfigError(
            "no parameter has the readout role, the matrix that maps to the logits (µP "
            "gives it its own init and LR): an output computed from the embedding "
            "(logits = h @ wte.weight.T) is a tied output; give the output layer its own "
            "parameter (an nn.Linear(width, vocab)), or name it 'readout' in the pattern "
            "table")


def role_table(model: nn.Module, base: nn.Module, wider: nn.Module | None,
               assign: Assigner) -> RoleTable:
    """The role table of ``model``: roles from ``assign`` (which gets ``wider``, the same
    model at a larger width, for inference), fan-ins from ``model``, base fan-ins from
    ``base`` (the model at its base width). Rows follow ``model.named_parameters()``. With
    ``wider`` (a whole model) the table must have a readout and some parameter that grows."""
    roles = assign(model, wider)
    _check_ties(model, roles)
    if wider is not None:  # a whole model (a family's): without it, a fragment in a test
        _check_scales(model, wider, roles)
    base_roles = assign(base, wider)
    rows = []
    for name, parameter in model.named_parameters():
        if name not in base_roles:
            raise ConfigError(f"parameter {name!r} exists at width-dependent sizes but not "
                              f"at the base width: a width must change only the sizes of "
                              f"the same parameters")
        declaration = roles[name]
        rows.append(TensorRole(name=name, role=declaration.role,
                               shape=tuple(parameter.shape), fan_in=declaration.fan_in,
                               base_fan_in=base_roles[name].fan_in,
                               zero_init=declaration.zero_init))
    return RoleTable(tuple(rows))

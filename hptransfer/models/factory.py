"""Your own model as a family: a factory function ``make_model(width=W, depth=L)``.

``--model path/to/file.py:make_model`` loads a Python file, ``--model package.module:fn``
imports a module, and ``--model NAME`` looks ``NAME`` up in the ``hptransfer.models``
entry-point group (a package's ``[project.entry-points."hptransfer.models"]``,
``NAME = "package.module:make_model"``). The contract, checked before anything runs:

- the factory is called with the keywords ``width`` and ``depth`` (it may ignore ``depth``)
  and, when its signature names them, ``vocab``, ``seq_len``, ``head_dim`` and
  ``attention_scale`` (the logit multiplier, 1/√D by default, 1/D under the ``lingle``
  preset; a model that cannot take it is trained at its own scale, and the prediction says
  so when the spec asked for another than 1/√D);
- it returns an ``nn.Module`` whose forward maps token ids ``(B, T)`` to logits
  ``(B, T, V)`` (or an object with ``.logits``), V at least the corpus vocabulary;
- its parameters keep their names and change only in size with width.

Roles (``--roles``, default ``auto``): declared when every module is a
:class:`~hptransfer.mup.tensors.Declared`, else the pattern table ``ROLES`` (a dict
``{name pattern: role}``) beside the factory in its module (or as ``make_model.roles``), else
inferred from shapes. The output contract and the training FLOPs per token are checked
and counted on the ``meta`` device with ``torch.utils.flop_counter`` (forward and backward
of one window, no memory); a forward that cannot run on meta tensors is checked on the
first training step and its FLOPs are estimated from its matrices.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hptransfer.errors import ConfigError
from hptransfer.models.family import ModelFamily
from hptransfer.mup.rules import attention_scale
from hptransfer.spec import AttentionScale, DepthRule, ModelSpec, RoleSource

if TYPE_CHECKING:
    from torch import nn

    from hptransfer.mup.sources import Assigner

__all__ = ["ENTRY_POINTS", "FactoryFamily", "factory_family"]

ENTRY_POINTS = "hptransfer.models"


def _load(target: str) -> Callable[..., Any]:
    """The callable ``target`` names: ``file.py:fn`` or ``package.module:fn``."""
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise ConfigError(f"--model {target!r}: give path/to/file.py:function or "
                          f"package.module:function")
    try:
        if where.endswith(".py"):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"--model {target!r}: there is no file {path}")
            name = f"hptransfer_user_model_{abs(hash(str(path)))}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            # its folder on the import path while it loads, as Python has a script's: a
            # factory file imports the modules beside it (`from layers import Block`)
            sys.path.insert(0, str(path.parent))
            try:
                spec.loader.exec_module(module)
            finally:
                sys.path.remove(str(path.parent))
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as error:  # the user's module failed to import: say where
        raise ConfigError(f"--model {target!r}: importing {where} raised "
                          f"{type(error).__name__}: {error}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ConfigError(f"--model {target!r}: {where} has no function {attr!r}")
    return factory


def _entry_point(name: str) -> str | None:
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group=ENTRY_POINTS) if ep.name == name]
    return found[0].value if found else None


class FactoryFamily(ModelFamily):
    """A model made by a user's factory function (module docstring)."""

    def __init__(self, name: str, target: str) -> None:
        self.name, self.target = name, target
        self.factory = _load(target)
        self._signature = inspect.signature(self.factory)

    def _keywords(self, spec: ModelSpec) -> dict[str, Any]:
        """width and depth always (through ``**kwargs`` too), the optional ones by name."""
        parameters = self._signature.parameters
        var_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        values = {"width": spec.width, "depth": spec.depth, "vocab": spec.vocab,
                  "seq_len": spec.seq_len, "head_dim": spec.head_dim,
                  "attention_scale": attention_scale(spec)}
        return {k: v for k, v in values.items()
                if k in parameters or (var_keyword and k in ("width", "depth"))}

    def check(self, spec: ModelSpec) -> None:
        super().check(spec)
        if "width" not in self._keywords(spec):
            raise ConfigError(f"--model {self.target}: the factory must take the keyword "
                              f"width (called as {self.factory.__name__}(width=W, depth=L))")
        if spec.depth_rule is not DepthRule.NONE:
            raise ConfigError(f"--depth-rule {spec.depth_rule.value} scales residual branches "
                              f"inside the model, which hptransfer cannot do for a factory's "
                              f"model: use --depth-rule none")
        self._check_output(spec)

    def make(self, spec: ModelSpec) -> nn.Module:
        from torch import nn

        keywords = self._keywords(spec)
        shown = ", ".join(f"{k}={v!r}" for k, v in keywords.items())
        try:
            model = self.factory(**keywords)
        except Exception as error:
            raise ConfigError(f"--model {self.target}: {self.factory.__name__}({shown}) raised "
                              f"{type(error).__name__}: {error} (a width it cannot build? "
                              f"heads must divide the width, for example)") from None
        if not isinstance(model, nn.Module):
            raise ConfigError(f"--model {self.target}: {self.factory.__name__}({shown}) "
                              f"returned {type(model).__name__}, not a torch nn.Module")
        return model

    def assigner(self, spec: ModelSpec) -> Assigner:
        from hptransfer.models.family import auto_assigner
        from hptransfer.mup.sources import from_patterns

        table = self._pattern_table()
        if spec.roles is RoleSource.PATTERNS:
            if table is None:
                raise ConfigError(f"--roles patterns: {self.target} has no pattern table; "
                                  f"define ROLES = {{\"lm_head.weight\": \"readout\", ...}} "
                                  f"beside the factory")
            return from_patterns(table)
        if spec.roles is RoleSource.AUTO and table is not None:
            return auto_assigner(from_patterns(table))
        return super().assigner(spec)

    def _pattern_table(self) -> dict[str, str] | None:
        table = getattr(self.factory, "roles", None)
        if table is None:
            table = getattr(inspect.getmodule(self.factory), "ROLES", None)
        if table is not None and not isinstance(table, dict):
            raise ConfigError(f"{self.target}: ROLES must be a dict of name pattern → role, "
                              f"got {type(table).__name__}")
        return table

    def limitations(self, spec: ModelSpec) -> tuple[str, ...]:
        if "attention_scale" in self._signature.parameters or (
                spec.attention_scale is AttentionScale.INV_SQRT_D):
            return ()
        return (f"the attention scale {spec.attention_scale.value} was not applied: "
                f"{self.factory.__name__} takes no attention_scale keyword, so its attention "
                f"keeps its own scale (docs/models.md)",)

    @functools.lru_cache(maxsize=32)  # noqa: B019  (one family object per name, cached)
    def _probe(self, spec_json: str) -> tuple[tuple[int, ...], float] | None:
        """The logits' shape and the training FLOPs per token of one window, on the meta
        device (no memory, no compute); None when the forward cannot run on meta tensors."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        from hptransfer.models.family import logits_of

        spec = ModelSpec.model_validate_json(spec_json)
        with torch.device("meta"):
            model = self.make(spec)
            tokens = torch.zeros(1, spec.seq_len, dtype=torch.long)
            try:
                with FlopCounterMode(display=False) as counter:
                    logits = logits_of(model(tokens))
                    logits.float().sum().backward()
            except ConfigError:
                raise
            except Exception:  # data-dependent code (.item(), masks): no meta run
                return None
        return tuple(logits.shape), counter.get_total_flops() / spec.seq_len

    def _check_output(self, spec: ModelSpec) -> None:
        probe = self._probe(spec.model_dump_json())
        if probe is None:
            return  # checked on the first training step instead
        shape = probe[0]
        if len(shape) != 3 or shape[:2] != (1, spec.seq_len):
            raise ConfigError(f"--model {self.target}: its forward maps token ids (1, "
                              f"{spec.seq_len}) to {shape}; it must return logits (B, T, V)")
        if shape[2] < spec.vocab:
            raise ConfigError(f"--model {self.target}: its logits have V = {shape[2]} entries, "
                              f"fewer than the vocabulary {spec.vocab}: let the factory take "
                              f"vocab= (hptransfer passes the corpus's) or build it larger")

    def flops_per_token(self, spec: ModelSpec) -> float:
        """Counted on the meta device; else 3 × (2 × matrix parameters + 2·2·L·T·M), the
        built-in convention with attention over the model width."""
        probe = self._probe(spec.model_dump_json())
        if probe is not None:
            return probe[1]
        from hptransfer.models.family import table_of
        from hptransfer.mup.roles import Role

        matrices = sum(math.prod(row.shape) for row in table_of(self, spec)
                       if row.role in (Role.HIDDEN, Role.READOUT))
        return 3.0 * (2.0 * matrices + 4 * spec.depth * spec.seq_len * spec.width)

    def describe(self) -> dict:
        return {"family": "factory", "target": self.target}


def factory_family(name: str) -> FactoryFamily:
    """The family ``--model name`` names: a factory target, or an entry point's."""
    if ":" in name:
        return FactoryFamily(name, name)
    target = _entry_point(name)
    if target is None:
        raise ConfigError(f"--model {name!r} is not a model family: use builtin, hf-llama, "
                          f"hf-gpt2, path/to/file.py:make_model, package.module:make_model, "
                          f"or the name of an installed {ENTRY_POINTS!r} entry point")
    return FactoryFamily(name, target)

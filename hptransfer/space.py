"""The search space of a tune: which hparams vary, over what ranges, and the warm-start grid.

Learning rate is log-uniform; weight decay is log-uniform with zero as an explicit choice;
batch size is a power of two. Every other field of :class:`HParams` is fixed by ``base``.
Defaults are sized for the built-in CPU proxies (µP relative rule, base width 128).

>>> space = SearchSpace()
>>> [round(math.log2(lr)) for lr in space.lr_octaves(step=2)]
[-12, -10, -8, -6, -4, -2]
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from hptransfer.hparams import MULTIPLIERS, HParams
from hptransfer.spec import FrozenConfig

if TYPE_CHECKING:
    import optuna

__all__ = ["SearchSpace"]


class SearchSpace(FrozenConfig):
    """Ranges of the tuned hparams; ``None`` for a range fixes that hparam at ``base``."""

    lr: tuple[float, float] | None = Field((2.0**-12, 2.0**-2),
                                           description="log-uniform range of the base LR α")
    weight_decay: tuple[float, float] | None = Field(
        None, description="log-uniform range of λ (zero is also a choice); None: fixed")
    batch_sizes: tuple[int, ...] | None = Field(
        None, description="powers of two to choose the batch size from; None: fixed")
    multipliers: tuple[float, float] | None = Field(
        None, description="log-uniform range of each per-module multiplier (the embedding's "
                          "LR, the readout's output multiplier: HParams' MULTIPLIERS); "
                          "None: held at base")
    base: HParams = Field(default_factory=HParams,
                          description="values of every hparam that is not searched")

    @model_validator(mode="after")
    def _check(self) -> SearchSpace:
        for name in ("lr", "weight_decay", "multipliers"):
            bounds = getattr(self, name)
            if bounds is not None and not 0 < bounds[0] < bounds[1]:
                raise ValueError(f"{name} range must satisfy 0 < low < high, got {bounds}")
        if self.batch_sizes is not None:
            bad = [b for b in self.batch_sizes if b < 1 or b & (b - 1)]
            if bad or not self.batch_sizes:
                raise ValueError(f"batch_sizes must be powers of two, got {self.batch_sizes}")
            # every search starts from the base (the ladder's bowl, the warm-start grid,
            # Ray's define-by-run space): a base outside the choices is a trial the space
            # cannot hold
            if self.base.batch_size not in self.batch_sizes:
                raise ValueError(f"the base batch size {self.base.batch_size} is not one of "
                                 f"batch_sizes {self.batch_sizes}: add it, or set the base "
                                 f"([hparams] batch_size) to one of them")
        return self

    @property
    def searched(self) -> tuple[str, ...]:
        names = ("lr", "weight_decay", "batch_size")
        ranges = (self.lr, self.weight_decay, self.batch_sizes)
        return tuple(n for n, r in zip(names, ranges, strict=True) if r is not None)

    def suggest(self, trial: optuna.Trial) -> HParams:
        """Draw one point from ``trial`` (parameter names are the HParams field names)."""
        values: dict[str, Any] = {}
        if self.lr is not None:
            values["lr"] = trial.suggest_float("lr", *self.lr, log=True)
        if self.weight_decay is not None:
            # zero is its own choice: log-uniform ranges cannot reach it, yet "no decay" is
            # the paper's baseline and often the answer for short proxy runs
            if trial.suggest_categorical("weight_decay_on", [False, True]):
                values["weight_decay"] = trial.suggest_float("weight_decay",
                                                             *self.weight_decay, log=True)
            else:
                values["weight_decay"] = 0.0
        if self.batch_sizes is not None:
            values["batch_size"] = trial.suggest_categorical("batch_size",
                                                             list(self.batch_sizes))
        if self.multipliers is not None:
            for name in MULTIPLIERS:
                values[name] = trial.suggest_float(name, *self.multipliers, log=True)
        return HParams(**{**self.base.model_dump(), **values})

    def lr_octaves(self, step: int = 1) -> list[float]:
        """Powers of two inside the LR range, ``step`` octaves apart, from the top down to
        the bottom of the range; ``lr_octaves(2)`` is the warm-start grid that brackets the
        bowl at every width before the sampler takes over (the paper's grid is 2 apart)."""
        if self.lr is None:
            return []
        low, high = (math.ceil(math.log2(self.lr[0]) - 1e-9),
                     math.floor(math.log2(self.lr[1]) + 1e-9))
        return [2.0**e for e in range(high, low - 1, -step)][::-1]

    def grid_point(self, lr: float) -> dict[str, Any]:
        """Optuna params for an enqueued grid trial at ``lr`` (other hparams at base)."""
        params: dict[str, Any] = {"lr": lr}
        if self.weight_decay is not None:
            params["weight_decay_on"] = self.base.weight_decay > 0
            if self.base.weight_decay > 0:
                params["weight_decay"] = self.base.weight_decay
        if self.batch_sizes is not None:
            params["batch_size"] = (self.base.batch_size if self.base.batch_size in
                                    self.batch_sizes else self.batch_sizes[0])
        if self.multipliers is not None:
            params.update({name: getattr(self.base, name) for name in MULTIPLIERS})
        return params

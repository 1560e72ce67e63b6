"""The training budget of one run: how long it trains and how often it is evaluated.

A budget is given in optimizer steps or in training tokens (exactly one of the two); the
other follows from the batch size and sequence length, see :meth:`Budget.resolve_steps`.

>>> Budget(steps=100).resolve_steps(tokens_per_step=8192)
100
>>> Budget(tokens=819200).resolve_steps(tokens_per_step=8192)
100
"""

from __future__ import annotations

import math

from pydantic import Field, model_validator

from hptransfer.spec import FrozenConfig

__all__ = ["DEFAULT_STEPS", "Budget"]

DEFAULT_STEPS = 200  # when neither steps nor tokens is given


class Budget(FrozenConfig):
    """How long to train and how to evaluate."""

    steps: int | None = Field(None, gt=0, description="optimizer steps (or give tokens)",
                              json_schema_extra={"cli_default": f"{DEFAULT_STEPS}, unless "
                                                                f"--tokens is given"})
    tokens: int | None = Field(None, gt=0, description="training tokens (or give steps)",
                               json_schema_extra={"cli_default": "none: the budget is "
                                                                 "--steps"})
    eval_every: int = Field(50, gt=0, description="validate every this many steps")
    eval_tokens: int = Field(
        65536, gt=0,
        description="validation tokens per evaluation (a fixed set, the same for every run)")
    divergence_factor: float = Field(
        1.5, gt=1,
        description="stop as DIVERGED when the training loss exceeds this × its first value")

    @model_validator(mode="before")
    @classmethod
    def _default_steps(cls, data: object) -> object:
        if isinstance(data, dict) and data.get("steps") is None and data.get("tokens") is None:
            return {**data, "steps": DEFAULT_STEPS}
        return data

    @model_validator(mode="after")
    def _one_of_steps_or_tokens(self) -> Budget:
        if self.steps is not None and self.tokens is not None:
            raise ValueError(
                f"give the budget as steps or as tokens, not both "
                f"(got steps={self.steps}, tokens={self.tokens})")
        return self

    def resolve_steps(self, *, tokens_per_step: int) -> int:
        """Optimizer steps this budget allows at ``tokens_per_step`` (rounded up)."""
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.tokens / tokens_per_step))

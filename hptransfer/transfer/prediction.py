"""The :class:`Prediction` record, and µP for the target model it describes.

A prediction holds the hparams for a target model with their intervals, the rules applied,
the warnings and the :class:`Evidence` behind them. It builds the target model (the study's
family at the target width), its µP param groups and optimizer, the Hugging Face
``Trainer`` optimizers, and code to paste (:mod:`hptransfer.transfer.export`). It is made
by :mod:`hptransfer.transfer.predictor`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.hparams import HParams
from hptransfer.mup.rules import describe_hidden_lr
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.optimum import SeedNoise, WidthEvidence
from hptransfer.transfer.baselines import Baseline
from hptransfer.transfer.fit import TransferFit
from hptransfer.transfer.regret import ExpectedRegret
from hptransfer.transfer.rules import Rule

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Evidence", "Prediction"]


class Evidence(FrozenConfig):
    widths: tuple[WidthEvidence, ...]
    fits: dict[str, TransferFit]
    searched: tuple[str, ...]
    proxy_depth: int
    proxy_tokens: int = Field(description="training tokens of one proxy trial")
    proxy_batch: int = Field(description="the proxies' optimum batch (sequences)")
    bootstrap: int
    seed: int
    band: float
    window_octaves: float
    seed_noise: SeedNoise | None = Field(
        None, description="the seed noise measured on the study's seed replicates, which "
                          "every width's LR interval includes; None: the study has none")


class Prediction(FrozenConfig):
    """Hparams for a target model, with intervals, the rules applied, warnings and the
    evidence; JSON via ``model_dump_json()``."""

    study: str
    target_width: int
    target_depth: int
    target_tokens: int
    spec: ModelSpec = Field(description="the target model (the study's spec at the target)")
    hparams: HParams
    intervals: dict[str, tuple[float, float]] = Field(
        description="per tuned hparam, the 95% interval [low, high]")
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...]
    evidence: Evidence
    baselines: dict[str, Baseline] = Field(default_factory=dict)
    regret: ExpectedRegret | None = Field(
        None, description="the loss expected to be lost at the predicted LR, from the bowls' "
                          "curvature and the LR interval (transfer/regret.py)")

    def hidden_lr(self) -> str:
        """The per-step LR of the hidden matrices at the target, in words."""
        return describe_hidden_lr(self.spec, self.hparams.lr)

    def family_notes(self) -> tuple[str, ...]:
        """What the target's model family could not apply (each is also a warning)."""
        from hptransfer.models.registry import family_of

        return family_of(self.spec).limitations(self.spec)

    def build_model(self, *, seed: int = 0) -> nn.Module:
        """The target model (``spec``'s family at the target width) with its µP init, the
        readout's multiplier τ included (a model built elsewhere needs
        :meth:`scale_init`)."""
        from hptransfer.models.registry import build_model

        return build_model(self.spec, seed=seed, hparams=self.hparams)

    def scale_init(self, model: nn.Module) -> None:
        """Apply the predicted per-module init multipliers (the readout's τ) to a freshly
        initialised target ``model``: with :meth:`param_groups`, τ is then an output
        multiplier (a no-op at τ = 1)."""
        from hptransfer.models.registry import role_table
        from hptransfer.mup.tensors import scale_init

        scale_init(model, role_table(self.spec), self.hparams)

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Torch param groups of the target ``model`` (the spec's family at the target
        width: names and shapes are checked) with each tensor's LR, λ and ε, for
        ``torch.optim.AdamW(groups, betas=(beta1, beta2))``."""
        from hptransfer.transfer.export import param_groups_for

        return param_groups_for(model, self.spec, self.hparams)

    def optimizer(self, model: nn.Module):
        """The optimizer (AdamW or Lion) over :meth:`param_groups`."""
        from hptransfer.transfer.export import optimizer_for

        return optimizer_for(model, self.spec, self.hparams)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the target run (``target_tokens`` at the predicted batch)."""
        from hptransfer.transfer.export import total_steps

        return total_steps(self.spec, self.hparams, self.target_tokens)

    def hf_optimizers(self, model: nn.Module, steps: int | None = None):
        """``(optimizer, scheduler)`` for ``transformers.Trainer(optimizers=...)``."""
        from hptransfer.transfer.export import hf_optimizers

        return hf_optimizers(model, self.spec, self.hparams, steps or self.total_steps)

    def torch_snippet(self) -> str:
        """Python code building the target model with its µP optimizer and schedule."""
        from hptransfer.transfer.export import torch_snippet

        return torch_snippet(self.spec, self.hparams, study=self.study,
                             tokens=self.target_tokens)

    def hf_snippet(self) -> str:
        """The same for Hugging Face's ``Trainer``."""
        from hptransfer.transfer.export import hf_snippet

        return hf_snippet(self.spec, self.hparams, study=self.study,
                          tokens=self.target_tokens)

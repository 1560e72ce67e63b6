"""The :class:`Prediction` record and its exports.

A prediction holds the hparams for a target model with their intervals, the rules applied,
the warnings and the :class:`Evidence` behind them; it writes itself out as torch param
groups with µP per-tensor LRs or as Hugging Face ``TrainingArguments`` fields. It is made by
:mod:`hptransfer.transfer.predictor`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from pydantic import Field

from hptransfer.hparams import HParams, Optimizer, Schedule, WeightDecay
from hptransfer.mup.rules import describe_hidden_lr
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.transfer.baselines import Baseline
from hptransfer.transfer.fit import TransferFit
from hptransfer.transfer.optimum import WidthEvidence
from hptransfer.transfer.rules import Rule

__all__ = ["Evidence", "Prediction"]

HF_WARNING = ("Hugging Face Trainer applies ONE global learning rate to every tensor: the µP "
              "per-tensor multipliers are NOT applied. Under µP the hidden and readout "
              "matrices of this model need {hidden}; use the torch param-groups snippet "
              "(Prediction.to_torch_param_groups_snippet) or pass your own optimizer to "
              "Trainer(optimizers=...). per_device_train_batch_size × devices × "
              "gradient_accumulation_steps must equal {batch}. weight_decay here is "
              "PyTorch's coupled λ for the global LR ({wd_note}).")


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

    def hidden_lr(self) -> str:
        """The per-step LR of the hidden matrices at the target, in words."""
        return describe_hidden_lr(self.spec, self.hparams.lr)

    def to_torch_param_groups_snippet(self) -> str:
        """Python code building hptransfer's Transformer at the target width with µP
        per-tensor LRs (:func:`hptransfer.mup.tensors.param_groups`) and the schedule."""
        h = self.hparams
        steps = math.ceil(self.target_tokens / (h.batch_size * self.spec.seq_len))
        if h.optimizer is Optimizer.LION:
            make = ("for group in groups:\n    group.pop(\"eps\")  # Lion has no ε\n"
                    "optimizer = Lion(groups, betas=(hparams.beta1, hparams.beta2))")
            extra = "from hptransfer.train.optimizer import Lion\n"
        else:
            make = "optimizer = torch.optim.AdamW(groups, betas=(hparams.beta1, hparams.beta2))"
            extra = ""
        clip = (f"    torch.nn.utils.clip_grad_norm_(model.parameters(), {h.grad_clip!r})\n"
                if h.grad_clip > 0 else "")
        return (
            f"# µP hparams predicted by hptransfer (study {self.study!r}) for width "
            f"{self.target_width}; hidden matrices: {self.hidden_lr()}\n"
            "import torch\n\n"
            "from hptransfer.hparams import HParams\n"
            "from hptransfer.models.transformer import Transformer\n"
            "from hptransfer.mup.tensors import param_groups\n"
            "from hptransfer.spec import ModelSpec\n"
            f"{extra}"
            "from hptransfer.train.schedule import lr_factor\n\n"
            f"spec = ModelSpec.model_validate_json({self.spec.model_dump_json()!r})\n"
            f"hparams = HParams.model_validate_json({h.model_dump_json()!r})\n"
            "model = Transformer(spec)\n"
            "# one group per (lr, weight_decay, eps), absolute values from the µP table\n"
            "groups = param_groups(model, spec, hparams)\n"
            f"{make}\n"
            "peak_lrs = [group[\"lr\"] for group in optimizer.param_groups]\n"
            f"total_steps = {steps}  # {self.target_tokens} tokens / (batch {h.batch_size} × "
            f"seq {self.spec.seq_len})\n\n\n"
            "def before_step(step: int) -> None:\n"
            "    \"\"\"Call after loss.backward(), before optimizer.step(): schedule every "
            "group and clip the gradient.\"\"\"\n"
            "    for group, peak in zip(optimizer.param_groups, peak_lrs):\n"
            "        group[\"lr\"] = peak * lr_factor(step, total_steps=total_steps, "
            "hparams=hparams)\n"
            f"{clip}")

    def hf_warning(self) -> str:
        h = self.hparams
        note = (f"independent λ = {h.weight_decay:g} converted to λ/α"
                if h.weight_decay_rule is WeightDecay.INDEPENDENT else
                f"{h.weight_decay_rule.value} λ unchanged")
        return HF_WARNING.format(hidden=self.hidden_lr(), batch=h.batch_size, wd_note=note)

    def to_hf_training_arguments(self) -> dict[str, Any]:
        """Hugging Face ``TrainingArguments`` fields. Warns (UserWarning, and see
        :meth:`hf_warning`): HF uses one global LR, so µP's per-tensor LRs are lost."""
        h = self.hparams
        weight_decay = (h.weight_decay / h.lr if h.weight_decay_rule is
                        WeightDecay.INDEPENDENT else h.weight_decay)
        warnings.warn(self.hf_warning(), UserWarning, stacklevel=2)
        return {
            "learning_rate": h.lr,
            "weight_decay": weight_decay,
            "per_device_train_batch_size": h.batch_size,
            "lr_scheduler_type": "cosine" if h.schedule is Schedule.COSINE else "linear",
            "warmup_ratio": h.warmup_fraction,
            "adam_beta1": h.beta1,
            "adam_beta2": h.beta2,
            "adam_epsilon": h.eps,
            "max_grad_norm": h.grad_clip,
            "optim": "lion_32bit" if h.optimizer is Optimizer.LION else "adamw_torch",
        }

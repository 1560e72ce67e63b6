"""µP for the full-size model: what a user takes home from a prediction.

Given the target's spec and hparams (``Prediction.spec`` / ``.hparams``), these build the
optimizer a training stack needs, with each tensor's own LR, weight decay and ε from the
role table (:mod:`hptransfer.mup`): for a plain PyTorch loop (:func:`optimizer_for` and
:func:`scheduler_for`), for Hugging Face's ``Trainer`` (:func:`hf_optimizers`, passed as
``Trainer(optimizers=...)``), or as code to paste (:func:`torch_snippet`,
:func:`hf_snippet`). The model must be the spec's (same family, parameter names and
shapes): :func:`hptransfer.models.registry.build_model` builds it with the µP init.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from hptransfer.hparams import HParams, Optimizer
from hptransfer.spec import ModelSpec

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["hf_optimizers", "hf_snippet", "hf_training_arguments", "optimizer_for",
           "param_groups_for", "scheduler_for", "torch_snippet", "total_steps"]


def param_groups_for(model: nn.Module, spec: ModelSpec, hparams: HParams
                     ) -> list[dict[str, Any]]:
    """Torch param groups of ``model`` (``spec``'s model) with each tensor's absolute LR,
    λ and ε, ready for ``torch.optim.AdamW(groups, betas=...)``."""
    from hptransfer.models.registry import role_table
    from hptransfer.mup.tensors import param_groups

    return param_groups(model, role_table(spec), spec, hparams)


def optimizer_for(model: nn.Module, spec: ModelSpec, hparams: HParams
                  ) -> torch.optim.Optimizer:
    """The optimizer hptransfer trains ``spec``'s model with (AdamW or Lion, µP groups)."""
    from hptransfer.models.registry import role_table
    from hptransfer.training.optimizer import build_optimizer

    return build_optimizer(model, role_table(spec), spec, hparams)


def total_steps(spec: ModelSpec, hparams: HParams, tokens: int) -> int:
    """Optimizer steps of a run of ``tokens`` tokens at ``hparams.batch_size`` sequences."""
    return max(1, math.ceil(tokens / (hparams.batch_size * spec.seq_len)))


def scheduler_for(optimizer: torch.optim.Optimizer, hparams: HParams, steps: int
                  ) -> torch.optim.lr_scheduler.LambdaLR:
    """hptransfer's schedule (warmup, then linear or cosine decay) over ``steps`` optimizer
    steps, as a ``LambdaLR`` that multiplies every group's own peak LR."""
    import torch

    from hptransfer.training.schedule import lr_factor

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(min(step, steps - 1), total_steps=steps,
                                          hparams=hparams))


def hf_optimizers(model: nn.Module, spec: ModelSpec, hparams: HParams, steps: int):
    """``(optimizer, scheduler)`` for ``transformers.Trainer(optimizers=...)``: the µP
    groups and hptransfer's schedule, so the Trainer's own ``learning_rate`` and
    ``weight_decay`` are not used."""
    optimizer = optimizer_for(model, spec, hparams)
    return optimizer, scheduler_for(optimizer, hparams, steps)


def hf_training_arguments(hparams: HParams, steps: int) -> dict[str, Any]:
    """``TrainingArguments`` fields that go with :func:`hf_optimizers` (batch, steps,
    clipping). The LR, weight decay, betas and ε live in the optimizer's groups."""
    return {"per_device_train_batch_size": hparams.batch_size, "max_steps": steps,
            "max_grad_norm": hparams.grad_clip, "lr_scheduler_type": "constant"}


def _header(spec: ModelSpec, hparams: HParams, study: str, steps: int, tokens: int) -> str:
    from hptransfer.mup.rules import describe_hidden_lr

    return (f"# µP hparams predicted by hptransfer (study {study!r}) for the {spec.model} "
            f"model at width {spec.width}; hidden matrices: "
            f"{describe_hidden_lr(spec, hparams.lr)}\n"
            f"# {steps} steps = {tokens} tokens / (batch {hparams.batch_size} × seq "
            f"{spec.seq_len})\n")


def _setup(spec: ModelSpec, hparams: HParams, names: str) -> str:
    return ("from hptransfer.hparams import HParams\n"
            "from hptransfer.models.registry import build_model\n"
            "from hptransfer.spec import ModelSpec\n"
            f"from hptransfer.transfer.export import {names}\n\n"
            f"spec = ModelSpec.model_validate_json({spec.model_dump_json()!r})\n"
            f"hparams = HParams.model_validate_json({hparams.model_dump_json()!r})\n"
            "model = build_model(spec, seed=0, hparams=hparams)  # the spec's model, µP "
            "init (with the readout's multiplier)\n")


def torch_snippet(spec: ModelSpec, hparams: HParams, *, study: str, tokens: int) -> str:
    """Python code for a plain PyTorch loop: the model, its µP optimizer and schedule."""
    steps = total_steps(spec, hparams, tokens)
    clip = (f"    torch.nn.utils.clip_grad_norm_(model.parameters(), {hparams.grad_clip!r})\n"
            if hparams.grad_clip > 0 else "")
    kind = "Lion" if hparams.optimizer is Optimizer.LION else "AdamW"
    return (_header(spec, hparams, study, steps, tokens) + "import torch\n\n"
            + _setup(spec, hparams, "optimizer_for, scheduler_for")
            + f"optimizer = optimizer_for(model, spec, hparams)  # {kind}, one group per "
              f"(lr, weight_decay, eps) of the µP table\n"
              f"scheduler = scheduler_for(optimizer, hparams, steps={steps})\n\n\n"
              "def step(loss: torch.Tensor) -> None:\n"
              "    \"\"\"One optimizer step on a loss of the model's logits.\"\"\"\n"
              "    loss.backward()\n" + clip +
              "    optimizer.step()\n    scheduler.step()\n"
              "    optimizer.zero_grad(set_to_none=True)\n")


def hf_snippet(spec: ModelSpec, hparams: HParams, *, study: str, tokens: int) -> str:
    """Python code for Hugging Face's ``Trainer`` with the µP optimizer and schedule."""
    steps = total_steps(spec, hparams, tokens)
    fields = hf_training_arguments(hparams, steps)
    arguments = ", ".join(f"{k}={v!r}" for k, v in fields.items())
    return (_header(spec, hparams, study, steps, tokens)
            + "from transformers import Trainer, TrainingArguments\n\n"
            + _setup(spec, hparams, "hf_optimizers")
            + f"# per_device_train_batch_size × devices × gradient_accumulation_steps must be "
              f"{hparams.batch_size}\n"
              f"args = TrainingArguments(output_dir=\"out\", {arguments})\n"
              f"optimizers = hf_optimizers(model, spec, hparams, steps={steps})\n"
              "trainer = Trainer(model=model, args=args, optimizers=optimizers,\n"
              "                  train_dataset=...)  # your dataset of input_ids and labels\n")

"""Optimizers over µP param groups: AdamW (PyTorch's fused kernel) and Lion.

The groups come from :func:`hptransfer.mup.tensors.param_groups`, which already holds
each tensor's absolute LR, weight decay and ε; this module only picks the update rule.
"""

from __future__ import annotations

import torch
from torch import nn

from hptransfer.hparams import HParams, Optimizer
from hptransfer.mup.roles import RoleTable
from hptransfer.mup.tensors import param_groups
from hptransfer.spec import ModelSpec

__all__ = ["Lion", "build_optimizer"]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2).

    Per step, with gradient g and momentum m::

        c = β1·m + (1 − β1)·g
        p ← p − lr·(sign(c) + λ·p)
        m ← β2·m + (1 − β2)·g

    Weight decay is decoupled (multiplied by lr, as in AdamW). Implemented with foreach
    kernels: on small CPU proxies the optimizer step is a visible share of step time.
    """

    def __init__(self, params, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr <= 0:
            raise ValueError(f"Lion lr must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            momenta = []
            for p in params:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                momenta.append(state["exp_avg"])
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            if wd:
                torch._foreach_mul_(params, 1.0 - lr * wd)
            direction = torch._foreach_lerp(momenta, grads, 1.0 - beta1)
            torch._foreach_sign_(direction)
            torch._foreach_add_(params, direction, alpha=-lr)
            torch._foreach_lerp_(momenta, grads, 1.0 - beta2)
        return loss


def build_optimizer(model: nn.Module, roles: RoleTable, spec: ModelSpec, hparams: HParams
                    ) -> torch.optim.Optimizer:
    """The optimizer for ``model`` with the µP per-tensor LR, λ and ε of its role table."""
    groups = param_groups(model, roles, spec, hparams)
    betas = (hparams.beta1, hparams.beta2)
    if hparams.optimizer is Optimizer.LION:
        for group in groups:
            group.pop("eps")  # Lion has no ε
        return Lion(groups, lr=hparams.lr, betas=betas)
    # fused=True: one kernel for the whole update instead of ~10 ops per tensor; on
    # overhead-bound small proxies this is a measurable share of step time.
    return torch.optim.AdamW(groups, lr=hparams.lr, betas=betas, eps=hparams.eps,
                             fused=True)

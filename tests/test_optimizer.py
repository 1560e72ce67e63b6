"""Lion against the paper's update rule (Chen et al. 2023, Algorithm 2)."""

from __future__ import annotations

import torch

from hptransfer.training.optimizer import Lion


def _reference_lion(p, grads, lr, beta1, beta2, wd):
    p, m = p.clone(), torch.zeros_like(p)
    for g in grads:
        c = beta1 * m + (1 - beta1) * g
        p = p - lr * (torch.sign(c) + wd * p)
        m = beta2 * m + (1 - beta2) * g
    return p, m


def test_lion_follows_the_update_rule():
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, 4, generator=gen)
    grads = [torch.randn(5, 4, generator=gen) for _ in range(6)]
    lr, betas, wd = 0.01, (0.9, 0.99), 0.1
    param = torch.nn.Parameter(start.clone())
    opt = Lion([param], lr=lr, betas=betas, weight_decay=wd)
    for g in grads:
        param.grad = g.clone()
        opt.step()
    expected_p, expected_m = _reference_lion(start, grads, lr, *betas, wd)
    torch.testing.assert_close(param.detach(), expected_p)
    torch.testing.assert_close(opt.state[param]["exp_avg"], expected_m)


def test_lion_update_has_unit_size_per_coordinate():
    param = torch.nn.Parameter(torch.zeros(100))
    param.grad = torch.randn(100)
    Lion([param], lr=0.5).step()
    assert torch.all(param.detach().abs() == 0.5)

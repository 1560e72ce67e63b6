"""The depth rule: CompleteP's residual branch multiplier L₀/L (docs/spec.md §4, Dey et al. 2025).

The physics: at L = L₀ the rule changes nothing, bit for bit; at other depths every branch
is scaled by L₀/L, which keeps the residual stream and its updates flat in depth where the
unscaled model's grow with it; the predictor stops warning about depth once the rule is on.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hptransfer.budget import Budget
from hptransfer.hparams import EpsRule, HParams
from hptransfer.models.registry import role_table
from hptransfer.models.transformer import Block, Transformer
from hptransfer.mup.roles import Role
from hptransfer.mup.rules import residual_multiplier
from hptransfer.mup.tensors import tensor_rules
from hptransfer.spec import DepthRule, ModelSpec
from hptransfer.training.loop import train
from hptransfer.training.optimizer import build_optimizer


def spec_at(depth: int, rule: DepthRule = DepthRule.COMPLETEP, base_depth: int = 2,
            **extra) -> ModelSpec:
    return ModelSpec(width=32, depth=depth, head_dim=16, seq_len=16, base_width=32,
                     depth_rule=rule, base_depth=base_depth, **extra)


def test_branch_multiplier_is_base_depth_over_depth():
    assert residual_multiplier(spec_at(8, DepthRule.NONE)) == 1.0
    assert residual_multiplier(spec_at(2)) == 1.0
    assert residual_multiplier(spec_at(8)) == 0.25
    assert residual_multiplier(spec_at(1)) == 2.0


def test_completep_at_base_depth_trains_bit_for_bit_like_no_rule(tiny_corpus):
    hparams = HParams(lr=2.0**-6, batch_size=2, eps_rule=EpsRule.SCALED)
    budget = Budget(steps=3, eval_every=3, eval_tokens=512)
    runs = [train(spec_at(2, rule), hparams, budget, tiny_corpus, threads=1)
            for rule in (DepthRule.NONE, DepthRule.COMPLETEP)]
    assert runs[0].final_val_loss == runs[1].final_val_loss
    assert [p.loss for p in runs[0].train_curve] == [p.loss for p in runs[1].train_curve]
    rules = [tensor_rules(role_table(s), s, hparams) for s in
             (spec_at(2, DepthRule.NONE), spec_at(2))]
    assert rules[0] == rules[1]


def test_block_scales_each_residual_branch():
    spec = spec_at(4, base_depth=1)
    block = Block(spec)
    for module in (block.attn, block.mlp):  # the model initialises these; any values do
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.1, generator=torch.Generator().manual_seed(0))
    x = torch.randn(2, 16, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        h = x + 0.25 * block.attn(block.attn_norm(x))
        expected = h + 0.25 * block.mlp(block.mlp_norm(h))
        torch.testing.assert_close(block(x), expected)


def test_scaled_eps_takes_the_branch_factor_on_hidden_matrices_only():
    hparams = HParams(eps=1e-8, eps_rule=EpsRule.SCALED)
    deep, base = spec_at(8), spec_at(8, DepthRule.NONE)
    for ours, plain in zip(tensor_rules(role_table(deep), deep, hparams),
                           tensor_rules(role_table(base), base, hparams), strict=True):
        factor = 0.25 if ours.role is Role.HIDDEN else 1.0
        assert ours.eps == pytest.approx(plain.eps * factor), ours.name
        assert ours.lr_multiplier == plain.lr_multiplier  # α = 1: no LR changes with depth
        assert ours.init_std == plain.init_std


def _residual_update(depth: int, rule: DepthRule, steps: int = 4) -> float:
    """Mean |Δx| of the final residual stream (the final norm's input) after ``steps``
    Adam steps at a fixed LR, on a fixed batch."""
    torch.manual_seed(0)
    spec = spec_at(depth, rule)
    model = Transformer(spec, seed=0)
    optimizer = build_optimizer(model, role_table(spec), spec, HParams(lr=2.0**-6))
    data = torch.randint(0, 256, (8, 17), generator=torch.Generator().manual_seed(0))
    seen: list[torch.Tensor] = []
    model.final_norm.register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    for _ in range(steps + 1):
        loss = F.cross_entropy(model(data[:, :-1]).flatten(0, 1), data[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (seen[-1] - seen[0]).abs().mean().item()


def test_completep_keeps_residual_updates_flat_across_depth():
    """A coord check in depth: from 2 to 8 blocks the residual stream's update stays within
    ×1.5 under CompleteP and grows several-fold without a rule (measured: ×0.84 vs ×8.8)."""
    with_rule = _residual_update(8, DepthRule.COMPLETEP) / _residual_update(2, DepthRule.COMPLETEP)
    without = _residual_update(8, DepthRule.NONE) / _residual_update(2, DepthRule.NONE)
    assert 1 / 1.5 < with_rule < 1.5
    assert without > 3


def test_predictor_warns_about_depth_only_without_a_depth_rule():
    from test_transfer import bowl, make_config

    from hptransfer.transfer import predict_from_trials

    records = bowl([32, 64])
    plain = make_config()
    completep = plain.model_copy(update={"spec": plain.spec.model_copy(
        update={"depth_rule": DepthRule.COMPLETEP, "base_depth": 4})})
    warned = predict_from_trials(records, plain, 1024, target_depth=16)
    ruled = predict_from_trials(records, completep, 1024, target_depth=16)
    assert any("depth transfer is not supported" in w for w in warned.warnings)
    assert not any("depth" in w for w in ruled.warnings)
    assert "depth-completep" in [r.name for r in ruled.rules]
    assert ruled.spec.depth == 16 and ruled.spec.depth_rule is DepthRule.COMPLETEP
    assert ruled.hparams.lr == warned.hparams.lr

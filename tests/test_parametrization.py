"""The µP table (docs/spec.md §2) and the base-width identity: µP at m = 1 is SP with µP's inits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hptransfer.budget import Budget
from hptransfer.hparams import HParams, WeightDecay
from hptransfer.models.registry import role_table
from hptransfer.models.transformer import Transformer
from hptransfer.mup.roles import Declaration, Role
from hptransfer.mup.sources import declared
from hptransfer.mup.sources import role_table as assemble
from hptransfer.mup.tensors import Declared, param_groups, tensor_rules
from hptransfer.spec import ModelSpec, Preset
from hptransfer.training.loop import train
from hptransfer.training.optimizer import build_optimizer


def _rules(spec: ModelSpec, hparams: HParams | None = None):
    return {r.name: r for r in tensor_rules(role_table(spec), spec, hparams)}


def test_every_multiplier_is_one_at_base_width():
    spec = ModelSpec(width=64, base_width=64, depth=2)
    for rule in _rules(spec, HParams(weight_decay=0.1,
                                     weight_decay_rule=WeightDecay.COUPLED_SCALED)).values():
        assert rule.lr_multiplier == 1.0
        assert rule.weight_decay in (0.0, 0.1)


@pytest.mark.parametrize("width", [64, 256])
def test_relative_rule_table(width):
    spec = ModelSpec(width=width, base_width=128, depth=1)
    m = width / 128
    rules = _rules(spec)
    assert rules["embed.weight"].init_std == 1.0 and rules["embed.weight"].lr_multiplier == 1
    for name in ("blocks.0.attn.wq", "blocks.0.attn.wkv", "blocks.0.mlp.w_in"):
        assert rules[name].init_std == pytest.approx(1 / math.sqrt(width))
        assert rules[name].lr_multiplier == pytest.approx(1 / m)
    assert rules["blocks.0.mlp.w_out"].init_std == pytest.approx(1 / math.sqrt(4 * width))
    # the default: SP's 1/√M at every width, with µP's α/m
    assert rules["readout.weight"].init_std == pytest.approx(1 / math.sqrt(width))
    assert rules["readout.weight"].lr_multiplier == pytest.approx(1 / m)
    mureadout = _rules(ModelSpec(width=width, base_width=128, depth=1,
                                 readout_init="sp-at-base"))
    assert mureadout["readout.weight"].init_std == pytest.approx(1 / math.sqrt(128) / m)
    lingle = _rules(ModelSpec(width=width, base_width=128, depth=1, **Preset.LINGLE.fields))
    assert lingle["readout.weight"].init_std == pytest.approx(1 / width)


def test_absolute_rule_divides_by_fan_in():
    spec = ModelSpec(width=128, param="mup-abs", depth=1)
    rules = _rules(spec)
    assert rules["blocks.0.attn.wq"].lr_multiplier == pytest.approx(1 / 128)
    assert rules["blocks.0.mlp.w_out"].lr_multiplier == pytest.approx(1 / 512)
    assert rules["readout.weight"].lr_multiplier == pytest.approx(1 / 128)
    assert rules["embed.weight"].lr_multiplier == 1.0


def test_sp_has_one_lr_and_fan_in_readout():
    spec = ModelSpec(width=256, param="sp", depth=1)
    rules = _rules(spec)
    assert {r.lr_multiplier for r in rules.values()} == {1.0}
    assert rules["readout.weight"].init_std == pytest.approx(1 / 16)
    assert len(param_groups(Transformer(spec), role_table(spec), spec, HParams())) == 1


def test_initial_weights_have_the_declared_std():
    spec = ModelSpec(width=256, depth=1, query_init="zero")
    model = Transformer(spec, seed=3)
    rules = _rules(spec)
    for name, parameter in model.named_parameters():
        expected = rules[name].init_std
        if expected == 0:
            assert torch.count_nonzero(parameter) == 0, name
        else:
            assert parameter.std().item() == pytest.approx(expected, rel=0.05), name


def test_weight_decay_conventions_give_the_stated_per_step_decay():
    """Per-step decay of a hidden matrix = lr_tensor · λ_tensor (docs/spec.md §3 table)."""
    spec = ModelSpec(width=512, base_width=128, depth=1)  # m = 4
    lr, lam = 2.0**-6, 0.1
    expected = {WeightDecay.COUPLED: lr / 4 * lam, WeightDecay.COUPLED_SCALED: lr * lam,
                WeightDecay.INDEPENDENT: lam}
    for rule, per_step in expected.items():
        hidden = _rules(spec, HParams(lr=lr, weight_decay=lam, weight_decay_rule=rule))[
            "blocks.0.mlp.w_in"]
        assert lr * hidden.lr_multiplier * hidden.weight_decay == pytest.approx(per_step)


def test_vectors_are_not_decayed():
    spec = ModelSpec(width=64, depth=1, norm_gain="vector", bias="projections")
    rules = _rules(spec, HParams(weight_decay=0.1))
    for rule in rules.values():
        assert (rule.weight_decay == 0) == (rule.role in (Role.GAIN, Role.BIAS))


def test_undeclared_parameter_is_refused():
    class Sneaky(Declared):
        def __init__(self):
            super().__init__()
            self.extra = nn.Parameter(torch.zeros(3))  # not declared

    with pytest.raises(TypeError, match="has no µP role"):
        declared(Sneaky())


def test_declared_roles_survive_renaming():
    """Roles come from the declaring module, not from parameter names."""

    class Renamed(Declared):
        def __init__(self):
            super().__init__()
            self.declare("readout_looking_name", (4, 8), Declaration(Role.HIDDEN, 8))

    model = Renamed()
    table = assemble(model, model, None, declared)
    (rule,) = tensor_rules(table, ModelSpec(width=256, base_width=128), HParams())
    assert rule.role is Role.HIDDEN and rule.init_std == pytest.approx(1 / math.sqrt(8))


@pytest.mark.parametrize("weight_decay_rule", list(WeightDecay))
def test_mup_at_base_width_trains_bit_for_bit_like_sp(tiny_corpus, weight_decay_rule):
    """microsoft/mup's backward-compatibility property (docs/spec.md §2), with the default
    constants: at m = 1, µP is the very SP model a user would tune (same inits, attention
    scale and readout init, one global LR)."""
    mup = ModelSpec(width=32, base_width=32, depth=2, seq_len=32)
    sp = ModelSpec(width=32, base_width=32, depth=2, seq_len=32, param="sp")
    hparams = HParams(lr=2.0**-5, batch_size=4, weight_decay=0.05,
                      weight_decay_rule=weight_decay_rule)
    budget = Budget(steps=8, eval_every=4, eval_tokens=512)
    a = train(mup, hparams, budget, tiny_corpus, seed=1)
    b = train(sp, hparams, budget, tiny_corpus, seed=1)
    assert [p.loss for p in a.train_curve] == [p.loss for p in b.train_curve]
    assert [p.loss for p in a.val_curve] == [p.loss for p in b.val_curve]


def test_lingle_constants_differ_from_sp_at_base_width(tiny_corpus):
    """...and the identity above is not vacuous: Lingle's constants (readout std 1/M,
    attention 1/D) change the run at the base width; µP with them is SP with them."""
    hparams, budget = HParams(batch_size=4), Budget(steps=4, eval_every=4, eval_tokens=512)
    shape = dict(width=32, base_width=32, depth=1, seq_len=32)
    lingle = train(ModelSpec(**shape, **Preset.LINGLE.fields), hparams, budget, tiny_corpus)
    sp = train(ModelSpec(**shape, param="sp"), hparams, budget, tiny_corpus)
    sp_lingle = train(ModelSpec(**shape, param="sp", **Preset.LINGLE.fields), hparams, budget,
                      tiny_corpus)
    assert lingle.final_val_loss != sp.final_val_loss
    assert lingle.final_val_loss == sp_lingle.final_val_loss


def test_the_default_readout_init_is_sp_s_and_sp_at_base_shrinks_as_one_over_m():
    def readout_std(**fields) -> float:
        spec = ModelSpec(base_width=32, head_dim=16, **fields)
        (readout,) = [r for r in tensor_rules(role_table(spec), spec) if r.role is Role.READOUT]
        return readout.init_std

    for width in (32, 64, 256):
        assert readout_std(width=width) == pytest.approx(1 / math.sqrt(width), rel=1e-12)
        assert readout_std(width=width, readout_init="sp-at-base") == pytest.approx(
            (1 / math.sqrt(32)) * 32 / width, rel=1e-12)
    # exactly SP's at the base width, either way
    assert readout_std(width=32) == readout_std(width=32, readout_init="sp-at-base") \
        == 1 / math.sqrt(32)


def test_optimizer_groups_carry_the_table_lrs():
    spec = ModelSpec(width=256, base_width=128, depth=1)
    optimizer = build_optimizer(Transformer(spec), role_table(spec), spec, HParams(lr=0.01))
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [0.005, 0.01]


def test_the_readout_multiplier_is_an_output_multiplier_under_adam():
    """τ on the readout's init and LR (how hptransfer applies ``readout_mult``, to any
    model) trains exactly like logits × τ (microsoft/mup's output multiplier): Adam's update
    does not depend on the gradient's scale. No clip here: a global clip would see the
    readout's gradient at another scale."""
    from hptransfer.models.family import logits_of
    from hptransfer.models.registry import build_model

    spec = ModelSpec(width=64, base_width=32, depth=1, head_dim=16, seq_len=16)
    tau = 4.0
    scaled = HParams(lr=2.0**-6, grad_clip=0.0, readout_mult=tau)
    plain = scaled.model_copy(update={"readout_mult": 1.0})
    batch = torch.randint(0, spec.vocab, (4, spec.seq_len + 1),
                          generator=torch.Generator().manual_seed(0))
    inputs, targets = batch[:, :-1], batch[:, 1:]
    runs = []
    for hparams, factor in ((scaled, 1.0), (plain, tau)):
        model = build_model(spec, seed=0, hparams=hparams)
        optimizer = build_optimizer(model, role_table(spec), spec, hparams)
        for _ in range(5):
            logits = factor * logits_of(model(inputs))
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        runs.append((factor * logits_of(model(inputs))).detach())
    # equal up to float rounding (Adam's early, sign-like steps amplify it on the smallest
    # gradients), far below what τ itself moves
    gap = (runs[0] - runs[1]).abs().max().item()
    assert gap < 1e-2
    model = build_model(spec, seed=0, hparams=plain)
    optimizer = build_optimizer(model, role_table(spec), spec, plain)
    for _ in range(5):
        loss = nn.functional.cross_entropy(logits_of(model(inputs)).flatten(0, 1),
                                           targets.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert (logits_of(model(inputs)) - runs[0]).abs().max().item() > 100 * gap


def test_the_multipliers_reach_the_optimizer_and_the_rules_table():
    spec = ModelSpec(width=256, base_width=32, depth=1, head_dim=16)
    hparams = HParams(lr=0.01, embedding_lr_mult=0.25, readout_mult=2.0)
    rules = {r.name: r for r in tensor_rules(role_table(spec), spec, hparams)}
    assert rules["embed.weight"].lr_multiplier == 0.25
    assert rules["readout.weight"].lr_multiplier == pytest.approx(2.0 / 8)
    assert rules["readout.weight"].init_std == pytest.approx(2.0 / math.sqrt(256))
    assert rules["blocks.0.mlp.w_in"].lr_multiplier == pytest.approx(1 / 8)
    model = Transformer(spec)
    lrs = {id(p): g["lr"] for g in param_groups(model, role_table(spec), spec, hparams)
           for p in g["params"]}
    named = dict(model.named_parameters())
    assert lrs[id(named["embed.weight"])] == pytest.approx(0.0025)
    assert lrs[id(named["readout.weight"])] == pytest.approx(0.01 * 2 / 8)

"""Tests for the typed configs: ModelSpec, HParams, Budget, and the LR schedule.

The parameter-count test builds the real :class:`~hptransfer.models.transformer.Transformer` for a
grid
of architecture options and compares ``ModelSpec.parameter_count`` (the basis of the FLOP
count in run records and of every scaling-law fit) with ``sum(p.numel())``.
"""

from __future__ import annotations

import itertools
import math

import pytest
from pydantic import ValidationError

from hptransfer.budget import Budget
from hptransfer.hparams import HParams, Schedule
from hptransfer.models.transformer import Transformer
from hptransfer.spec import (
    Activation,
    AttentionScale,
    Bias,
    EmbeddingNorm,
    KeyValueHeads,
    ModelSpec,
    NormGain,
    Parametrization,
    QueryInit,
    ReadoutInit,
)
from hptransfer.training.schedule import lr_factor, warmup_steps

# ---- ModelSpec: derived quantities ----------------------------------------------------------


def test_derived_quantities() -> None:
    spec = ModelSpec(width=256, head_dim=32, base_width=64, mlp_ratio=3)
    assert spec.heads == 8
    assert spec.kv_head_count == 8  # multi-head: one k/v head per query head
    assert spec.mlp_width == 3 * 256
    assert spec.width_multiplier == 4.0


def test_multi_query_has_one_kv_head() -> None:
    spec = ModelSpec(width=128, head_dim=16, kv_heads=KeyValueHeads.MULTI_QUERY)
    assert (spec.heads, spec.kv_head_count) == (8, 1)


def test_width_multiplier_is_exactly_one_at_base_width() -> None:
    spec = ModelSpec(width=96, head_dim=16, base_width=96)
    assert spec.width_multiplier == 1.0
    assert ModelSpec(width=256).width_multiplier == 2.0  # default base width 128


# ---- ModelSpec: parametrization-dependent defaults ------------------------------------------


@pytest.mark.parametrize(("param", "scale", "readout"), [
    ("sp", AttentionScale.INV_SQRT_D, ReadoutInit.SP),
    ("mup", AttentionScale.INV_SQRT_D, ReadoutInit.SP),
    ("mup-abs", AttentionScale.INV_SQRT_D, ReadoutInit.SP_AT_BASE),
])
def test_parametrization_defaults(param: str, scale: AttentionScale,
                                  readout: ReadoutInit) -> None:
    spec = ModelSpec(param=param)
    assert spec.param is Parametrization(param)
    assert spec.attention_scale is scale
    assert spec.readout_init is readout


def test_default_parametrization_is_mup() -> None:
    spec = ModelSpec()
    assert spec.param is Parametrization.MUP
    assert spec.attention_scale is AttentionScale.INV_SQRT_D


@pytest.mark.parametrize("param", ["sp", "mup", "mup-abs"])
def test_explicit_overrides_win_over_parametrization_defaults(param: str) -> None:
    for scale in AttentionScale:
        assert ModelSpec(param=param, attention_scale=scale).attention_scale is scale
    for readout in ReadoutInit:
        assert ModelSpec(param=param, readout_init=readout.value).readout_init is readout


def test_explicit_none_means_the_parametrization_default() -> None:
    spec = ModelSpec(param="sp", attention_scale=None, readout_init=None)
    assert spec.attention_scale is AttentionScale.INV_SQRT_D
    assert spec.readout_init is ReadoutInit.SP


# ---- ModelSpec: validation ------------------------------------------------------------------


def test_width_not_divisible_by_head_dim_names_both() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec(width=100, head_dim=16)
    message = str(caught.value)
    assert "width=100" in message
    assert "head_dim=16" in message


def test_base_width_not_divisible_by_head_dim() -> None:
    with pytest.raises(ValidationError, match=r"base_width=40 .*head_dim=16"):
        ModelSpec(width=64, head_dim=16, base_width=40)


def test_odd_head_dim_rejected_for_rotary() -> None:
    with pytest.raises(ValidationError, match="head_dim=5 must be even"):
        ModelSpec(width=20, head_dim=5, base_width=20)


@pytest.mark.parametrize("field", ["width", "depth", "head_dim", "base_width", "mlp_ratio"])
def test_non_positive_sizes_rejected(field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ModelSpec(**{field: 0})


@pytest.mark.parametrize(("field", "enum"), [
    ("activation", Activation),
    ("norm_gain", NormGain),
    ("bias", Bias),
    ("kv_heads", KeyValueHeads),
    ("query_init", QueryInit),
    ("param", Parametrization),
])
def test_unknown_enum_value_lists_the_choices(field: str, enum: type) -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec(**{field: "no-such-option"})
    errors = [e for e in caught.value.errors() if e["loc"] == (field,)]
    assert errors, caught.value
    for member in enum:
        assert repr(member.value) in errors[0]["msg"]


def test_unknown_field_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        ModelSpec(widht=64)
    (error,) = caught.value.errors()
    assert error["loc"] == ("widht",)
    assert error["type"] == "extra_forbidden"


def test_spec_is_frozen() -> None:
    spec = ModelSpec()
    with pytest.raises(ValidationError, match="frozen"):
        spec.width = 256
    assert spec.width == 128
    assert hash(spec) == hash(ModelSpec())  # frozen models are hashable


# ---- ModelSpec: parameter count against the real model --------------------------------------

_GRID = list(itertools.product(Activation, Bias, NormGain, KeyValueHeads, EmbeddingNorm))


@pytest.mark.parametrize(("activation", "bias", "norm_gain", "kv_heads", "embedding_norm"),
                         _GRID, ids=["-".join(o.value for o in options) for options in _GRID])
def test_parameter_count_matches_the_model(activation, bias, norm_gain, kv_heads,
                                           embedding_norm) -> None:
    spec = ModelSpec(width=64, depth=2, head_dim=16, vocab=97, seq_len=16, base_width=32,
                     activation=activation, bias=bias, norm_gain=norm_gain,
                     kv_heads=kv_heads, embedding_norm=embedding_norm)
    model = Transformer(spec)
    total = sum(p.numel() for p in model.parameters())
    embedding = model.embed.weight.numel()
    assert embedding == spec.vocab * spec.width
    assert spec.parameter_count() == total - embedding
    assert spec.parameter_count(embedding=True) == total

    # FLOPs count 2 per multiply-add of every weight matrix except the embedding lookup.
    matrices = sum(p.numel() for name, p in model.named_parameters()
                   if p.ndim == 2 and name != "embed.weight")
    attention = 2 * 2 * spec.depth * spec.seq_len * spec.width
    assert spec.flops_per_token() == 3.0 * (2.0 * matrices + attention)


# ---- ModelSpec: serialisation ---------------------------------------------------------------


@pytest.mark.parametrize("spec", [
    ModelSpec(),
    ModelSpec(param="sp"),
    ModelSpec(width=256, head_dim=32, param="mup-abs", readout_init="zero",
              attention_scale="1/sqrt(D)", norm_gain="scalar", embedding_norm="rms",
              bias="projections", query_init="zero", activation="swiglu",
              kv_heads="multi-query", precision="bf16", vocab=50257, seq_len=1024),
], ids=["default", "sp", "everything"])
def test_json_round_trip(spec: ModelSpec) -> None:
    text = spec.model_dump_json()
    assert ModelSpec.model_validate_json(text) == spec
    # A stored spec is explicit: the parametrization defaults are written out.
    assert f'"attention_scale":"{spec.attention_scale.value}"' in text


# ---- HParams --------------------------------------------------------------------------------


@pytest.mark.parametrize("lr", [0, 0.0, -1e-3, -1])
def test_non_positive_lr_rejected(lr: float) -> None:
    with pytest.raises(ValidationError) as caught:
        HParams(lr=lr)
    assert [e["loc"] for e in caught.value.errors()] == [("lr",)]
    assert "lr" in str(caught.value)


def test_large_lr_is_accepted_for_the_absolute_rule() -> None:
    """Under mup-abs, α carries the fan-in: 2^-6 · 1024 = 16 is a sensible base LR."""
    assert HParams(lr=16.0).lr == 16.0


def test_linear_decay_ends_exactly_at_final_fraction() -> None:
    assert _factors(50, final_lr_fraction=1e-4)[-1] == 1e-4


def test_one_step_run_trains_at_peak_and_warmup_leaves_room_to_decay() -> None:
    assert _factors(1, warmup_fraction=0.0) == [1.0]
    assert warmup_steps(10, HParams(warmup_fraction=0.95)) == 9
    factors = _factors(40, warmup_fraction=0.95, final_lr_fraction=0.0)  # 38 warmup, 2 decay
    assert factors[-2:] == [1.0, 0.0]


@pytest.mark.parametrize("field", ["beta1", "beta2"])
@pytest.mark.parametrize("value", [1, 1.0, 1.5])
def test_beta_at_least_one_rejected(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        HParams(**{field: value})


def test_betas_just_below_one_accepted() -> None:
    hparams = HParams(beta1=0.0, beta2=0.999)
    assert (hparams.beta1, hparams.beta2) == (0.0, 0.999)


def test_negative_weight_decay_rejected() -> None:
    with pytest.raises(ValidationError, match="weight_decay"):
        HParams(weight_decay=-1e-4)
    assert HParams(weight_decay=0).weight_decay == 0.0


def test_hparams_defaults_and_round_trip() -> None:
    hparams = HParams()
    assert hparams.lr == 2.0**-6
    assert hparams.schedule is Schedule.LINEAR
    assert HParams.model_validate_json(hparams.model_dump_json()) == hparams


# ---- Budget ---------------------------------------------------------------------------------


def test_budget_defaults_to_200_steps() -> None:
    budget = Budget()
    assert (budget.steps, budget.tokens) == (200, None)
    assert budget.resolve_steps(tokens_per_step=1000) == 200


def test_budget_in_tokens_has_no_steps() -> None:
    assert Budget(tokens=10_000).steps is None


def test_budget_steps_and_tokens_both_rejected() -> None:
    with pytest.raises(ValidationError, match=r"not both .*steps=10, tokens=5"):
        Budget(steps=10, tokens=5)


@pytest.mark.parametrize(("tokens", "per_step", "steps"), [
    (819_200, 8192, 100),  # exact
    (819_201, 8192, 101),  # one token more: one more step
    (8191, 8192, 1),
    (1, 8192, 1),
])
def test_resolve_steps_from_tokens_rounds_up(tokens: int, per_step: int, steps: int) -> None:
    assert Budget(tokens=tokens).resolve_steps(tokens_per_step=per_step) == steps


@pytest.mark.parametrize("budget", [Budget(), Budget(tokens=4096), Budget(steps=7)])
def test_budget_json_round_trip(budget: Budget) -> None:
    assert Budget.model_validate_json(budget.model_dump_json()) == budget


# ---- schedule.lr_factor ---------------------------------------------------------------------


def _factors(total: int, **hparams) -> list[float]:
    h = HParams(**hparams)
    return [lr_factor(t, total_steps=total, hparams=h) for t in range(total)]


def test_warmup_ramps_from_one_over_w_to_one() -> None:
    factors = _factors(100, warmup_fraction=0.1)
    assert warmup_steps(100, HParams(warmup_fraction=0.1)) == 10
    assert factors[:10] == pytest.approx([(t + 1) / 10 for t in range(10)], rel=1e-15)
    assert factors[0] == 0.1  # the first step already moves the weights
    assert factors[9] == 1.0
    assert factors[10] == 1.0  # decay starts at 1 on the first post-warmup step


@pytest.mark.parametrize("schedule", list(Schedule))
@pytest.mark.parametrize("final", [1e-4, 0.1, 0.0])
def test_decay_ends_at_final_lr_fraction(schedule: Schedule, final: float) -> None:
    factors = _factors(50, warmup_fraction=0.2, schedule=schedule, final_lr_fraction=final)
    decay = factors[10:]
    assert decay[0] == 1.0
    assert math.isclose(decay[-1], final, rel_tol=1e-12, abs_tol=1e-15)
    assert all(b <= a for a, b in zip(decay, decay[1:], strict=False))
    assert min(factors) == pytest.approx(final, rel=1e-12, abs=1e-15)


def test_cosine_ends_exactly_at_final_fraction() -> None:
    assert _factors(20, schedule="cosine", final_lr_fraction=1e-4)[-1] == 1e-4


def test_linear_and_cosine_shapes() -> None:
    # 0 warmup, 5 steps, final 0: linear 1, .75, .5, .25, 0; cosine is 0.5 at mid-decay.
    assert _factors(5, warmup_fraction=0.0, final_lr_fraction=0.0) == pytest.approx(
        [1.0, 0.75, 0.5, 0.25, 0.0])
    cosine = _factors(5, warmup_fraction=0.0, final_lr_fraction=0.0, schedule="cosine")
    assert cosine[2] == pytest.approx(0.5)
    assert cosine[1] > 0.75  # cosine stays higher than linear early in the decay


@pytest.mark.parametrize("schedule", list(Schedule))
def test_no_warmup_starts_at_one(schedule: Schedule) -> None:
    factors = _factors(10, warmup_fraction=0.0, schedule=schedule)
    assert factors[0] == 1.0

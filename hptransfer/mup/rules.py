"""All µP arithmetic: init, per-tensor LR, weight decay and ε for every role, width and depth.

The table (Lingle's relative rule, Tensor Programs V Table 3 with base width M₀,
m = M / M₀; docs/spec.md §2 and docs/parametrization.md row by row):

=========== ==================== ======= ============= =================
role        init std             LR, SP  LR, µP        LR, µP (absolute)
=========== ==================== ======= ============= =================
embedding   1                    α       α             α
hidden      1/√fan_in (or 0)     α       α / m         α / fan_in
readout     1/√M (SP's, µP's     α       α / m         α / fan_in
            default), √M₀/M,
            1/M (Lingle), or 0
gain        1 (ones)             α       α             α
bias        0 (zeros)            α       α             α
=========== ==================== ======= ============= =================

Forward multipliers: attention logits × 1/√D (SP, and µP's default: D is fixed) or 1/D
(Lingle's); residual branches × L₀/L under CompleteP. At m = 1 and L = L₀ every factor is
exactly 1.0 and µP's default constants are SP's, so µP at its base width trains bit for bit
like the SP model with one global LR (tested for every model family). Everything else in
hptransfer that depends on how a rule scales with width asks a function here; the table is
applied to a model's tensors by :mod:`hptransfer.mup.tensors`. No torch here.
"""

from __future__ import annotations

import math

from hptransfer.hparams import EpsRule, HParams, WeightDecay
from hptransfer.mup.roles import Declaration, Role, TensorRole
from hptransfer.spec import AttentionScale, DepthRule, ModelSpec, Parametrization, ReadoutInit

__all__ = [
    "formulation",
    "alpha_for_base_lr",
    "attention_scale",
    "coupled_decay_scale",
    "describe_hidden_lr",
    "hidden_lr",
    "eps",
    "init_kind",
    "init_multiplier",
    "init_std",
    "logits_shrink_at_init",
    "lr_multiplier",
    "module_lr_multiplier",
    "residual_multiplier",
    "weight_decay",
    "weight_decay_depends_on_width",
]

_READOUT_INIT = {ReadoutInit.SP_AT_BASE: "readout init std √M₀/M (SP's at the base width)",
                 ReadoutInit.MUP: "readout init std 1/M (Lingle)",
                 ReadoutInit.SP: "readout init std 1/√M", ReadoutInit.ZERO: "readout init 0"}


def formulation(spec: ModelSpec) -> str:
    """What a run's record says about how it was parametrized. hptransfer scales the readout
    LR like the hidden matrices' and has no output multiplier (Lingle's form);
    microsoft/mup's equivalent form (width-independent readout init, forward multiplier
    1/m, readout LR α) is not used."""
    return (f"{spec.param.value}: {_READOUT_INIT[spec.readout_init]}, readout LR scaled like "
            f"hidden, no output multiplier, attention {spec.attention_scale.value}, base width "
            f"{spec.base_width}")


# ---- forward multipliers ---------------------------------------------------------------------

def attention_scale(spec: ModelSpec) -> float:
    """Multiplier of q·kᵀ: 1/√D (SP's, µP's default) or 1/D (Lingle's); with D fixed
    across widths either is width-independent."""
    if spec.attention_scale is AttentionScale.INV_D:
        return 1.0 / spec.head_dim
    return 1.0 / math.sqrt(spec.head_dim)


def residual_multiplier(spec: ModelSpec) -> float:
    """Multiplier of every residual branch: 1, or L₀/L under CompleteP (α = 1).

    L₀/L keeps each block's feature update Θ(1/L), so the sum over L blocks stays Θ(1) and
    the LR optimum stops moving with depth (Dey et al. 2025, arXiv 2505.01618). For Adam at
    α = 1 no LR or init changes with depth. Exactly 1.0 at L = L₀.
    """
    if spec.depth_rule is DepthRule.COMPLETEP:
        return spec.base_depth / spec.depth
    return 1.0


# ---- per tensor ------------------------------------------------------------------------------

def init_std(declaration: Declaration | TensorRole, spec: ModelSpec) -> float:
    """Standard deviation of the normal init (gains are ones, biases zeros: std 0)."""
    role = declaration.role
    if declaration.zero_init or role in (Role.GAIN, Role.BIAS):
        return 0.0
    if role is Role.EMBEDDING:
        return 1.0
    if role is Role.HIDDEN:
        return 1.0 / math.sqrt(declaration.fan_in)
    # Readout: std ∝ 1/M (Lingle's µP) keeps logits Θ(1) after the first update while the
    # init contribution vanishes like 1/√M; SP's 1/√M keeps them Θ(1) at init. µP's default
    # is SP's 1/√M at every width (with µP's α/m LR): SP at the base width, and at short
    # horizons the readout that starts larger wins (docs/parametrization.md: 0.046 nats at
    # width 256 over √M₀/M, which starts from SP's at the base width and shrinks as 1/m
    # beyond, microsoft/mup's MuReadout); Lingle's 1/M is √M₀ times smaller at M₀.
    if spec.readout_init is ReadoutInit.ZERO:
        return 0.0
    if spec.readout_init is ReadoutInit.MUP:
        return 1.0 / declaration.fan_in
    if spec.readout_init is ReadoutInit.SP_AT_BASE:
        base = _base_fan_in(declaration, spec)
        # (1/√base) / m, not √base/fan_in: exactly SP's 1/√fan_in at m = 1
        return 1.0 / math.sqrt(base) / (declaration.fan_in / base)
    return 1.0 / math.sqrt(declaration.fan_in)


def _base_fan_in(declaration: Declaration | TensorRole, spec: ModelSpec) -> float:
    """A matrix's fan-in at the base width: the role table's, or, for a module's own
    declaration of a width-sized fan-in, the fan-in over m."""
    base = getattr(declaration, "base_fan_in", None)
    return base if base is not None else declaration.fan_in / spec.width_multiplier


def lr_multiplier(row: TensorRole, spec: ModelSpec, hparams: HParams | None = None
                  ) -> float:
    """Per-tensor LR as a multiple of the base LR α, from the tensor's own fan-in and its
    fan-in at the base width (m = fan_in / base_fan_in; for the built-in model that is
    M / M₀ for every matrix, and a matrix whose fan-in does not grow keeps α), times the
    module's own width-independent multiplier from ``hparams`` (the embedding's
    ``embedding_lr_mult``; 1 without ``hparams``)."""
    module = module_lr_multiplier(row, hparams)
    if spec.param is Parametrization.SP or row.role not in (Role.HIDDEN, Role.READOUT):
        return module
    if spec.param is Parametrization.MUP:
        # integer fan-ins: the quotient is M / M₀ to the last bit, and exactly 1.0 at the
        # base width, where µP must equal SP
        return module / (row.fan_in / row.base_fan_in)
    return module / row.fan_in  # MUP_ABS


def module_lr_multiplier(row: TensorRole, hparams: HParams | None) -> float:
    """A module's LR multiplier that does not depend on width, tuned on the proxies and
    carried to the target as it is (µP makes it width-independent): the embedding's, and
    the readout's output multiplier τ (:func:`init_multiplier`)."""
    if hparams is None:
        return 1.0
    if row.role is Role.EMBEDDING:
        return hparams.embedding_lr_mult
    if row.role is Role.READOUT:
        return hparams.readout_mult
    return 1.0


def init_multiplier(row: Declaration | TensorRole, hparams: HParams | None) -> float:
    """A module's init std multiplier from ``hparams``: τ = ``readout_mult`` for the readout.

    Why τ on both the readout's init and its LR: logits = τ·W·h with W at the table's init
    and LR trains exactly like W' = τ·W with τ× the init and τ× the LR under Adam and Lion
    (their updates do not depend on the gradient's scale; up to ε and the global clip), so
    this is microsoft/mup's output multiplier without touching a model's forward."""
    if hparams is not None and row.role is Role.READOUT:
        return hparams.readout_mult
    return 1.0


def weight_decay(row: TensorRole, spec: ModelSpec, hparams: HParams) -> float:
    """The λ to hand the optimizer so the per-step decay follows ``hparams.weight_decay_rule``.

    PyTorch's AdamW (and our Lion) decay a tensor by lr_tensor(t)·λ_tensor per step, with
    lr_tensor(t) = s(t)·α·multiplier. Solving for λ_tensor gives the three conventions of
    docs/spec.md §3. Gains and biases are never decayed.
    """
    if not row.role.is_matrix or hparams.weight_decay == 0:
        return 0.0
    multiplier = lr_multiplier(row, spec, hparams)
    rule = hparams.weight_decay_rule
    if rule is WeightDecay.COUPLED:
        return hparams.weight_decay
    if rule is WeightDecay.COUPLED_SCALED:
        return hparams.weight_decay / multiplier
    return hparams.weight_decay / (hparams.lr * multiplier)  # INDEPENDENT


def eps(row: TensorRole, spec: ModelSpec, hparams: HParams) -> float:
    """Adam ε: one constant, or scaled like the LR multiplier (and, for hidden matrices,
    which all sit inside residual branches, by the depth rule's L₀/L too)."""
    if hparams.eps_rule is EpsRule.CONSTANT:
        return hparams.eps
    depth = residual_multiplier(spec) if row.role is Role.HIDDEN else 1.0
    return hparams.eps * lr_multiplier(row, spec, hparams) * depth


def init_kind(declaration: Declaration | TensorRole, spec: ModelSpec) -> str:
    if declaration.role is Role.GAIN:
        return "ones"
    return "normal" if init_std(declaration, spec) > 0 else "zeros"


# ---- how the rules scale, for the code that reasons about them ------------------------------

def _hidden(fan_in: int, base_fan_in: int) -> TensorRole:
    return TensorRole(name="", role=Role.HIDDEN, shape=(), fan_in=fan_in,
                      base_fan_in=base_fan_in)


def hidden_lr(spec: ModelSpec, alpha: float) -> float:
    """The per-step LR of the model-width (M → ·) hidden matrices at ``spec`` for base LR
    ``alpha``: α under SP, α/m under the relative rule, α/M under the absolute one."""
    base = spec.width if spec.param is Parametrization.MUP_ABS else spec.base_width
    return alpha * lr_multiplier(_hidden(spec.width, base), spec)


def describe_hidden_lr(spec: ModelSpec, alpha: float) -> str:
    """The per-step LR of the hidden matrices at ``spec`` for base LR ``alpha``, in words."""
    if spec.param is Parametrization.SP:
        return f"α = {alpha:.4g} (SP: one LR)"
    if spec.param is Parametrization.MUP:
        m = spec.width_multiplier
        hidden = _hidden(spec.width, spec.base_width)
        return f"α/m = {alpha * lr_multiplier(hidden, spec):.4g} (m = {m:g})"
    width, mlp = spec.width, spec.mlp_width  # the absolute rule: each matrix's own fan-in
    return (f"α/fan_in = {alpha * lr_multiplier(_hidden(width, width), spec):.4g} for the "
            f"M = {width} → · matrices, {alpha * lr_multiplier(_hidden(mlp, mlp), spec):.4g} "
            f"for the MLP out (F = {mlp})")


def alpha_for_base_lr(spec: ModelSpec, hidden_lr: float) -> float:
    """The base LR α that gives the M → · hidden matrices ``hidden_lr`` at the base width.

    SP and the relative rule give them α itself there (:func:`lr_multiplier` is 1 at
    m = 1); the absolute rule gives α/fan_in, so its α carries a factor of the base width.
    """
    if spec.param is Parametrization.MUP_ABS:
        return hidden_lr * spec.base_width
    return hidden_lr


def weight_decay_depends_on_width(spec: ModelSpec, rule: WeightDecay) -> bool:
    """Whether the per-step decay of a hidden matrix changes with width: only coupled λ
    under µP (its decay s(t)·α·multiplier·λ shrinks with the multiplier)."""
    return rule is WeightDecay.COUPLED and spec.param is not Parametrization.SP


def coupled_decay_scale(spec: ModelSpec) -> float:
    """The factor coupled λ must take at ``spec`` to decay hidden matrices per step as much
    as λ does at the base width: m under either µP rule (each gives a hidden matrix 1/m of
    its base-width LR, :func:`lr_multiplier`), 1 under SP."""
    return 1.0 if spec.param is Parametrization.SP else spec.width_multiplier


def logits_shrink_at_init(spec: ModelSpec) -> bool:
    """Whether the network output shrinks with width before the first update: a non-zero
    readout whose init std falls like 1/M (Lingle's, or √M₀/M) gives logits of size 1/√M
    (docs/spec.md §6); SP's 1/√M gives width-independent ones."""
    return spec.param is not Parametrization.SP and spec.readout_init in (
        ReadoutInit.MUP, ReadoutInit.SP_AT_BASE)

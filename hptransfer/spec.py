"""The model spec: what transformer a run trains, and how it is parametrized.

A :class:`ModelSpec` is typed, frozen data. Quantities that follow from others (number of
heads, MLP width, width multiplier) are derived here as properties and never passed around.
The architecture options are the ablations of Lingle, "A Large-Scale Exploration of
µ-Transfer" (arXiv 2404.05728), each an enum so a run's record says exactly what it trained.

Options whose default depends on the parametrization (attention scale, readout init) may be
left unset; they are resolved when the spec is built, so a stored spec is always explicit.

>>> spec = ModelSpec(width=256, head_dim=32)
>>> spec.heads, spec.width_multiplier, spec.attention_scale.value, spec.readout_init.value
(8, 2.0, '1/sqrt(D)', 'sp')
>>> ModelSpec(width=128, param="sp").readout_init.value
'sp'
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Activation",
    "AttentionScale",
    "EmbeddingNorm",
    "KeyValueHeads",
    "ModelSpec",
    "NormGain",
    "Parametrization",
    "Precision",
    "Preset",
    "QueryInit",
    "ReadoutInit",
    "Bias",
    "DepthRule",
    "FrozenConfig",
    "RoleSource",
]


class FrozenConfig(BaseModel):
    """Base of every hptransfer config: immutable, unknown fields rejected, enums by value."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False,
                              validate_default=True)


class Parametrization(str, Enum):
    """How init scales and per-tensor learning rates follow width (docs/spec.md §2)."""

    SP = "sp"  # standard: fan-in inits, one global LR
    MUP = "mup"  # µP, Lingle's relative rule: matrices get α / m, m = width / base_width
    MUP_ABS = "mup-abs"  # µP, absolute rule: matrices get α / fan_in


class AttentionScale(str, Enum):
    """Softmax temperature of q·kᵀ: SP's 1/√D (µP's default too: D is fixed, so it does not
    change with width), or Lingle's 1/D (with 1/√D his M = 128 preferred a lower LR)."""

    INV_D = "1/D"
    INV_SQRT_D = "1/sqrt(D)"


class NormGain(str, Enum):
    """Trainable RMSNorm gains. The paper's baseline has none; gains broke transfer."""

    NONE = "none"
    VECTOR = "vector"
    SCALAR = "scalar"


class EmbeddingNorm(str, Enum):
    """An RMSNorm (without gain) right after the token embedding (paper ablation)."""

    NONE = "none"
    RMS = "rms"


class Bias(str, Enum):
    """Biases on the projections (q, k, v, attention out, MLP in/out)."""

    NONE = "none"
    PROJECTIONS = "projections"


class QueryInit(str, Enum):
    NORMAL = "normal"
    ZERO = "zero"


class ReadoutInit(str, Enum):
    """Unembedding init std: SP's 1/√M at every width (µP's default: SP at the base width,
    and the best of these at the target, docs/parametrization.md); SP's 1/√M₀ at the base
    width shrinking as 1/m beyond it (√M₀/M, microsoft/mup's ``MuReadout``); Lingle's µP 1/M
    at every width (11× smaller than SP's at M₀ = 128); or zero."""

    SP_AT_BASE = "sp-at-base"
    MUP = "mup"
    SP = "sp"
    ZERO = "zero"


class Activation(str, Enum):
    RELU = "relu"
    GELU = "gelu"
    SQUARED_RELU = "squared-relu"
    SWIGLU = "swiglu"


class KeyValueHeads(str, Enum):
    """Multi-head (one k/v head per query head), grouped-query (one k/v head per
    ``kv_group`` query heads, so k/v grow with width) or multi-query (one shared k/v head)."""

    MULTI_HEAD = "multi-head"
    GROUPED = "grouped"
    MULTI_QUERY = "multi-query"


class DepthRule(str, Enum):
    """How residual branches scale with depth L (docs/spec.md §4); L₀ is ``base_depth``.

    NONE adds every branch as it is: the LR optimum moves with depth. COMPLETEP (Dey et al.
    2025, "Don't be lazy: CompleteP enables compute-efficient deep transformers", α = 1)
    multiplies each residual branch by L₀/L; the numbers are in
    :func:`hptransfer.mup.rules.residual_multiplier`.
    """

    NONE = "none"
    COMPLETEP = "completep"


class RoleSource(str, Enum):
    """Where a model's µP roles come from (docs/models.md; :mod:`hptransfer.mup.sources`)."""

    AUTO = "auto"  # declared if every parameter is, else the family's pattern table, else
    # inferred from shapes
    DECLARED = "declared"  # each module declares its parameters (hptransfer's own modules)
    PATTERNS = "patterns"  # a table of name patterns → role, every parameter matched once
    INFERRED = "inferred"  # the model built at two widths: the dimensions that grow


class Precision(str, Enum):
    """Matmul precision. BF16 is autocast: fp32 master weights and optimizer state."""

    FP32 = "fp32"
    BF16 = "bf16"


class Compilation(str, Enum):
    """Whether the training forward/backward runs through ``torch.compile`` (a run's
    execution, :class:`hptransfer.training.execution.Execution`; here, beside
    :class:`Precision`, because a family's ``parallelize`` hook compiles its blocks)."""

    EAGER = "eager"
    COMPILED = "compiled"  # faster steps on a GPU after a compile of tens of seconds


# Parametrization-dependent defaults, the one place they are decided. µP's are SP's at the
# base width (docs/parametrization.md, "The base-width identity"), so that there µP is
# exactly the SP model a user would tune directly: the attention scale is SP's 1/√D (D is
# fixed, so it is width-independent) and the readout init std is SP's 1/√M. The readout keeps
# 1/√M beyond the base width too (its LR is µP's α/m): measured at width 256 from proxies
# at 32 and 64, that reaches the grid-tuned SP model's loss (1.6786 vs 1.6796) where the
# √M₀/M of microsoft/mup's MuReadout trails it by 0.046 nats, and it transfers (Lingle's
# `sp-unembedding` ablation; docs/parametrization.md has the numbers). Lingle's constants
# (readout 1/M, attention 1/D) are the ``lingle`` preset (Preset below).
_DEFAULTS: dict[Parametrization, dict[str, Enum]] = {
    Parametrization.SP: {
        "attention_scale": AttentionScale.INV_SQRT_D,
        "readout_init": ReadoutInit.SP,
    },
    Parametrization.MUP: {
        "attention_scale": AttentionScale.INV_SQRT_D,
        "readout_init": ReadoutInit.SP,
    },
    # the absolute rule keeps √M₀/M: with 1/√M its coord check fails (MLP activations
    # shrink ×0.76 per doubling at t = 3, tests/test_coord_check.py)
    Parametrization.MUP_ABS: {
        "attention_scale": AttentionScale.INV_SQRT_D,
        "readout_init": ReadoutInit.SP_AT_BASE,
    },
}

class Preset(str, Enum):
    """A named set of ModelSpec constants.

    ``lingle``: Lingle's µP constants ("A Large-Scale Exploration of µ-Transfer": attention
    1/D, readout init std 1/M), what studies/ and docs/reproduction.md reproduce the paper
    with. At M₀ = 128 and D = 16 they cost 0.16 nats against SP at 300 steps
    (docs/parametrization.md); µP's defaults are SP's at the base width instead.
    """

    LINGLE = "lingle"

    @property
    def fields(self) -> dict[str, Enum]:
        return dict(_PRESETS[self])


_PRESETS = {Preset.LINGLE: {"attention_scale": AttentionScale.INV_D,
                            "readout_init": ReadoutInit.MUP}}


class ModelSpec(FrozenConfig):
    """A decoder-only, pre-norm transformer (RMSNorm, RoPE, untied embeddings).

    ``width`` is d_model (M); ``head_dim`` (D) stays fixed across widths so the number of
    heads grows with width; ``base_width`` (M₀) is the width at which µP equals SP.
    ``depth_rule`` with ``base_depth`` (L₀) does for depth what µP does for width; at
    L = L₀ it changes nothing.
    """

    model: str = Field(
        "builtin", min_length=1,
        description="model family: builtin, hf-llama, hf-gpt2, a factory "
                    "path/to/file.py:make_model or package.module:make_model, or the name of "
                    "an hptransfer.models entry point (docs/models.md)")
    roles: RoleSource = Field(RoleSource.AUTO, description="where the µP role of each "
                                                            "parameter comes from")
    width: int = Field(128, gt=0, description="d_model, M")
    depth: int = Field(4, gt=0, description="number of transformer blocks, L")
    head_dim: int = Field(16, gt=0, description="per-head dimension D, fixed across widths")
    vocab: int = Field(256, gt=1, description="vocabulary size (256 for byte tokens)")
    seq_len: int = Field(256, gt=1, description="training context length in tokens")
    base_width: int = Field(128, gt=0, description="µP base width M₀ (multipliers are 1 here)")
    mlp_ratio: int = Field(4, gt=0, description="MLP hidden width F = mlp_ratio · width")
    param: Parametrization = Field(Parametrization.MUP, description="parametrization")
    attention_scale: AttentionScale = Field(
        None, description="attention logit scale",
        json_schema_extra={"cli_default": "1/sqrt(D)"})
    readout_init: ReadoutInit = Field(
        None, description="unembedding init",
        json_schema_extra={"cli_default": "sp (1/√M) under µP and SP, sp-at-base under "
                                        "mup-abs"})
    norm_gain: NormGain = Field(NormGain.NONE, description="trainable RMSNorm gains")
    embedding_norm: EmbeddingNorm = Field(EmbeddingNorm.NONE,
                                          description="RMSNorm after the embedding")
    bias: Bias = Field(Bias.NONE, description="projection biases")
    query_init: QueryInit = Field(QueryInit.NORMAL, description="query projection init")
    activation: Activation = Field(Activation.RELU, description="MLP activation")
    kv_heads: KeyValueHeads = Field(KeyValueHeads.MULTI_HEAD,
                                    description="multi-head, grouped-query or multi-query "
                                                "attention")
    kv_group: int = Field(2, gt=0, description="query heads per k/v head under --kv-heads "
                                               "grouped")
    precision: Precision = Field(Precision.FP32, description="matmul precision")
    depth_rule: DepthRule = Field(
        DepthRule.NONE, description="residual branch scaling with depth (docs/spec.md §4)")
    base_depth: int = Field(4, gt=0, description="depth L₀ at which the depth rule is a no-op")

    @model_validator(mode="before")
    @classmethod
    def _fill_parametrization_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        try:
            param = Parametrization(data.get("param", Parametrization.MUP))
        except ValueError:
            # the field validator reports the bad value with its choices; fill µP's
            # defaults so it is the only error reported
            param = Parametrization.MUP
        filled = dict(data)
        for key, default in _DEFAULTS[param].items():
            if filled.get(key) is None:
                filled[key] = default
        return filled

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelSpec:
        if self.width % self.head_dim:
            raise ValueError(
                f"width={self.width} is not divisible by head_dim={self.head_dim}; "
                f"heads = width / head_dim must be whole: pick a width that is a multiple "
                f"of {self.head_dim} or change head_dim")
        if self.base_width % self.head_dim:
            raise ValueError(
                f"base_width={self.base_width} is not divisible by head_dim={self.head_dim}; "
                f"choose a base width that is a multiple of {self.head_dim}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.kv_heads is KeyValueHeads.GROUPED and self.heads % self.kv_group:
            raise ValueError(
                f"width={self.width} has {self.heads} heads, not a multiple of "
                f"kv_group={self.kv_group} (grouped-query attention shares one k/v head per "
                f"kv_group query heads): pick a width that is a multiple of "
                f"{self.head_dim * self.kv_group} or another kv_group")
        if self.kv_heads is KeyValueHeads.GROUPED and (self.base_width // self.head_dim) % \
                self.kv_group:
            raise ValueError(f"base_width={self.base_width} has {self.base_width // self.head_dim}"
                             f" heads, not a multiple of kv_group={self.kv_group}")
        return self

    # ---- derived quantities: computed here, never passed around -------------------------

    @property
    def heads(self) -> int:
        return self.width // self.head_dim

    @property
    def kv_head_count(self) -> int:
        if self.kv_heads is KeyValueHeads.GROUPED:
            return self.heads // self.kv_group
        return 1 if self.kv_heads is KeyValueHeads.MULTI_QUERY else self.heads

    @property
    def mlp_width(self) -> int:
        return self.mlp_ratio * self.width

    @property
    def width_multiplier(self) -> float:
        """m = M / M₀."""
        return self.width / self.base_width

    def parameter_count(self, *, embedding: bool = False) -> int:
        """Number of trainable parameters (non-embedding unless ``embedding=True``).

        The readout matrix counts as non-embedding, as in Kaplan et al. and Step Law.
        """
        total = self._matrix_params() + self._vector_params()
        return total + (self.vocab * self.width if embedding else 0)

    def flops_per_token(self) -> float:
        """Training FLOPs per token: 3 × (forward matmuls + attention), Kaplan's convention.

        Forward: 2 FLOPs per multiply-add of every weight matrix (including the readout,
        excluding the embedding lookup), plus 2·2·L·T·(H·D) for q·kᵀ and attention·v counted
        over the full T×T square (not halved for causality). Backward costs twice the forward.
        """
        attention = 2 * 2 * self.depth * self.seq_len * self.heads * self.head_dim
        return 3.0 * (2.0 * self._matrix_params() + attention)

    def _projection_widths(self) -> tuple[int, int, int, int]:
        """Output widths of q, k+v, attention out, MLP in (SwiGLU's in-projection is 2F)."""
        glu = 2 if self.activation is Activation.SWIGLU else 1
        return (self.heads * self.head_dim, 2 * self.kv_head_count * self.head_dim,
                self.width, glu * self.mlp_width)

    def _matrix_params(self) -> int:
        q, kv, out, mlp_in = self._projection_widths()
        per_block = (q + kv + mlp_in) * self.width + out * self.heads * self.head_dim
        per_block += self.mlp_width * self.width  # MLP out
        return self.depth * per_block + self.width * self.vocab  # + readout

    def _vector_params(self) -> int:
        biases = 0
        if self.bias is Bias.PROJECTIONS:
            biases = self.depth * (sum(self._projection_widths()) + self.width)
        gain = {NormGain.NONE: 0, NormGain.VECTOR: self.width, NormGain.SCALAR: 1}[
            self.norm_gain]
        norms = 2 * self.depth + 1  # two per block and the final norm
        return biases + norms * gain

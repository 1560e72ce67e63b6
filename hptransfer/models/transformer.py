"""The proxy transformer: decoder-only, pre-norm RMSNorm, RoPE, untied embeddings.

Read top to bottom: norm, rotary embedding, attention, MLP, block, the whole model. Every
parameter is created through :meth:`Declared.declare` with its µP role; the numbers (init
std, per-tensor LR) come from :mod:`hptransfer.mup.rules`, never from here.
Shapes in comments: B batch, T time, M width, H heads, D head dim, F MLP width, V vocab.

>>> from hptransfer.spec import ModelSpec
>>> model = Transformer(ModelSpec(width=32, depth=1, head_dim=16, seq_len=8))
>>> model(torch.zeros(2, 8, dtype=torch.long)).shape
torch.Size([2, 8, 256])
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hptransfer.mup.roles import Declaration, Role
from hptransfer.mup.rules import attention_scale, residual_multiplier
from hptransfer.mup.sources import declared
from hptransfer.mup.tensors import Declared, initialize
from hptransfer.spec import Activation, Bias, EmbeddingNorm, ModelSpec, NormGain, QueryInit

__all__ = ["Transformer", "initialize_transformer", "parallelize"]

_NORM_EPS = 1e-6


class RMSNorm(Declared):
    """RMSNorm with no gain (the paper's baseline), a vector gain, or one scalar gain."""

    def __init__(self, width: int, gain: NormGain) -> None:
        super().__init__()
        self.width = width
        self.gain_kind = gain
        if gain is NormGain.VECTOR:
            self.declare("gain", (width,), Declaration(Role.GAIN))
        elif gain is NormGain.SCALAR:
            self.declare("gain", (1,), Declaration(Role.GAIN))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gain_kind is NormGain.VECTOR:
            return F.rms_norm(x, (self.width,), self.gain, _NORM_EPS)
        y = F.rms_norm(x, (self.width,), None, _NORM_EPS)
        return y * self.gain if self.gain_kind is NormGain.SCALAR else y


class Rotary(nn.Module):
    """Rotary position embedding (Su et al. 2021), "rotate half" layout, base 10000."""

    def __init__(self, head_dim: int, seq_len: int) -> None:
        super().__init__()
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, head_dim, 2, dtype=torch.float64)
                                      / head_dim))
        angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)  # (T, D)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, T, D)
        t, half = x.shape[-2], x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * self.cos[:t] + rotated * self.sin[:t]


class Attention(Declared):
    """Causal self-attention; one shared k/v head under multi-query attention."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m, d = spec.width, spec.head_dim
        self.heads, self.kv_heads, self.head_dim = spec.heads, spec.kv_head_count, d
        self.scale = attention_scale(spec)
        zero_query = spec.query_init is QueryInit.ZERO
        self.declare("wq", (self.heads * d, m), Declaration(Role.HIDDEN, m, zero_query))
        self.declare("wkv", (2 * self.kv_heads * d, m), Declaration(Role.HIDDEN, m))
        self.declare("wo", (m, self.heads * d), Declaration(Role.HIDDEN, self.heads * d))
        self.biased = spec.bias is Bias.PROJECTIONS
        if self.biased:
            self.declare("bq", (self.heads * d,), Declaration(Role.BIAS))
            self.declare("bkv", (2 * self.kv_heads * d,), Declaration(Role.BIAS))
            self.declare("bo", (m,), Declaration(Role.BIAS))
        self.rotary = Rotary(d, spec.seq_len)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        bq, bkv, bo = (self.bq, self.bkv, self.bo) if self.biased else (None, None, None)
        q = F.linear(x, self.wq, bq).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        kv = F.linear(x, self.wkv, bkv).view(b, t, 2 * self.kv_heads, self.head_dim)
        k, v = kv.transpose(1, 2).split(self.kv_heads, dim=1)  # each (B, Hkv, T, D)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale,
                                           enable_gqa=self.kv_heads != self.heads)
        y = y.transpose(1, 2).reshape(b, t, self.heads * self.head_dim)  # (B, T, H·D)
        return F.linear(y, self.wo, bo)


class MLP(Declared):
    """Two-layer MLP, F = mlp_ratio·M; SwiGLU's in-projection is 2F wide (gate and value)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        m, f = spec.width, spec.mlp_width
        self.activation = spec.activation
        width_in = 2 * f if spec.activation is Activation.SWIGLU else f
        self.declare("w_in", (width_in, m), Declaration(Role.HIDDEN, m))
        self.declare("w_out", (m, f), Declaration(Role.HIDDEN, f))
        self.biased = spec.bias is Bias.PROJECTIONS
        if self.biased:
            self.declare("b_in", (width_in,), Declaration(Role.BIAS))
            self.declare("b_out", (m,), Declaration(Role.BIAS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b_in, b_out = (self.b_in, self.b_out) if self.biased else (None, None)
        h = F.linear(x, self.w_in, b_in)
        if self.activation is Activation.RELU:
            h = F.relu(h)
        elif self.activation is Activation.GELU:
            h = F.gelu(h)
        elif self.activation is Activation.SQUARED_RELU:
            h = F.relu(h).square()
        else:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        return F.linear(h, self.w_out, b_out)


class Block(nn.Module):
    """Pre-norm residual block: x + r·attn(norm(x)), then x + r·mlp(norm(x)).

    r is the depth rule's branch multiplier (1, or L₀/L under CompleteP), from
    :func:`~hptransfer.mup.rules.residual_multiplier`.
    """

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(spec.width, spec.norm_gain)
        self.attn = Attention(spec)
        self.mlp_norm = RMSNorm(spec.width, spec.norm_gain)
        self.mlp = MLP(spec)
        self.branch = residual_multiplier(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # add(alpha=1.0) is x + branch exactly, so the rule is a no-op at L = L₀
        x = x.add(self.attn(self.attn_norm(x)), alpha=self.branch)
        return x.add(self.mlp(self.mlp_norm(x)), alpha=self.branch)


class TokenEmbedding(Declared):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.declare("weight", (spec.vocab, spec.width), Declaration(Role.EMBEDDING))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, M)
        return F.embedding(idx, self.weight)


class Readout(Declared):
    """Unembedding (M → V) after the final norm; untied from the token embedding."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.declare("weight", (spec.vocab, spec.width), Declaration(Role.READOUT, spec.width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, M) -> (B, T, V)
        return F.linear(x, self.weight)


class Transformer(nn.Module):
    """The whole model. ``seed`` fixes the init; the same seed gives the same weights."""

    def __init__(self, spec: ModelSpec, *, seed: int = 0) -> None:
        super().__init__()
        self.spec = spec
        self.embed = TokenEmbedding(spec)
        self.embed_norm = (RMSNorm(spec.width, NormGain.NONE)
                           if spec.embedding_norm is EmbeddingNorm.RMS else nn.Identity())
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.depth))
        self.final_norm = RMSNorm(spec.width, spec.norm_gain)
        self.readout = Readout(spec)
        initialize_transformer(self, spec, seed=seed)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Token ids (B, T) → logits (B, T, V)."""
        x = self.embed_norm(self.embed(idx))
        for block in self.blocks:
            x = block(x)
        return self.readout(self.final_norm(x))


def initialize_transformer(model: nn.Module, spec: ModelSpec, *, seed: int = 0) -> None:
    """The model's µP init from ``seed``, from its declarations (whole or FSDP2-sharded:
    the same numbers either way, :func:`hptransfer.mup.tensors.initialize`)."""
    initialize(model, declared(model), spec, torch.Generator().manual_seed(seed))


def parallelize(model: Transformer, mesh, **options) -> None:
    """FSDP2 units of the built-in model: each :class:`Block` (attention and MLP: almost all
    of the weights at width), then the root (embedding, final norm, readout). ``options``:
    ``precision`` and ``compilation``, as :func:`~hptransfer.models.sharding.shard_blocks`
    takes them (bf16 compute, each block compiled)."""
    from hptransfer.models.sharding import shard_blocks

    shard_blocks(model, mesh, blocks=list(model.blocks), **options)

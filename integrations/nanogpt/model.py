"""A nanoGPT-style GPT (after karpathy/nanoGPT's model.py) as an hptransfer model family.

    hptransfer tune --model integrations/nanogpt/model.py:make_model --widths 32,64

``make_model`` follows hptransfer's factory contract (docs/models.md): it is called with
``width`` and ``depth`` and, because its signature names them, ``vocab``, ``seq_len``,
``head_dim`` and ``attention_scale``. Two changes from nanoGPT, both for µP:

- the attention logits are scaled by ``attention_scale`` (1/D under µP, 1/√D under SP)
  instead of a hard-coded 1/√D;
- the output layer is not tied to the token embedding (``tie=True`` restores nanoGPT's tie,
  which hptransfer refuses: µP gives the two different rules).

hptransfer infers every parameter's role from the model built at two widths, and
initialises the parameters itself (µP's table), so nanoGPT's init is not repeated here.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int, scale: float) -> None:
        super().__init__()
        self.c_attn = nn.Linear(width, 3 * width, bias=False)  # q, k, v in one matrix
        self.c_proj = nn.Linear(width, width, bias=False)
        self.heads, self.scale = heads, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, m = x.shape
        q, k, v = self.c_attn(x).split(m, dim=2)
        q, k, v = (z.view(b, t, self.heads, m // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, m))  # (B, T, M)


class MLP(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x)))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, scale: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, bias=False)
        self.attn = CausalSelfAttention(width, heads, scale)
        self.ln_2 = nn.LayerNorm(width, bias=False)
        self.mlp = MLP(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, width: int, depth: int, vocab: int, seq_len: int, head_dim: int,
                 scale: float, tie: bool) -> None:
        super().__init__()
        if width % head_dim:
            raise ValueError(f"width {width} is not a multiple of head_dim {head_dim}")
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(seq_len, width)
        self.h = nn.ModuleList(Block(width, width // head_dim, scale) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        if tie:
            self.wte.weight = self.lm_head.weight  # nanoGPT's weight tying

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def make_model(width: int, depth: int = 4, vocab: int = 256, seq_len: int = 256,
               head_dim: int = 16, attention_scale: float | None = None,
               tie: bool = False) -> GPT:
    """A GPT of ``width`` (d_model) and ``depth`` blocks; heads = width / head_dim."""
    scale = attention_scale if attention_scale is not None else 1 / math.sqrt(head_dim)
    return GPT(width, depth, vocab, seq_len, head_dim, scale, tie)


def make_tied_model(width: int, depth: int = 4, vocab: int = 256, seq_len: int = 256,
                    head_dim: int = 16, attention_scale: float | None = None) -> GPT:
    """nanoGPT as it is, output tied to the embedding: hptransfer refuses it (the fix is
    ``make_model``)."""
    return make_model(width, depth, vocab, seq_len, head_dim, attention_scale, tie=True)

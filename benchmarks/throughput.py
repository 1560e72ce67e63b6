"""Throughput of hptransfer's training step against a plain eager PyTorch loop.

Both loops train the same architecture (pre-norm RMSNorm without gains, RoPE, causal SDPA,
ReLU MLP, untied embeddings, AdamW, grad clip 1.0) on the same batches, in one process.
The plain loop is what a careful user would write first: ``nn.Linear`` layers with separate
q/k/v, ``nn.RMSNorm``, PyTorch's default (foreach) AdamW, fp32. hptransfer's loop is
:func:`hptransfer.training.loop.train` itself, timed through its own ``tokens_per_s`` field
(time spent in training steps, excluding evaluation).

FLOPs are counted as in :meth:`hptransfer.spec.ModelSpec.flops_per_token`: 6 × matmul
parameters (readout included, embedding lookup excluded) + 12·L·T·H·D for attention (the
full T×T square, not halved for causality). "Fraction of peak" divides achieved FLOP/s by a
large square matmul's FLOP/s measured here, in the precision used.

Run: ``python benchmarks/throughput.py [--widths 32,64,128,256] [--steps 30] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hptransfer.budget import Budget
from hptransfer.data.corpus import load_corpus
from hptransfer.hparams import HParams
from hptransfer.spec import ModelSpec, Precision
from hptransfer.training.loop import train


class PlainBlock(nn.Module):
    def __init__(self, width: int, head_dim: int, seq_len: int) -> None:
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.norm1 = nn.RMSNorm(width, elementwise_affine=False)
        self.q = nn.Linear(width, width, bias=False)
        self.k = nn.Linear(width, width, bias=False)
        self.v = nn.Linear(width, width, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.norm2 = nn.RMSNorm(width, elementwise_affine=False)
        self.fc1 = nn.Linear(width, 4 * width, bias=False)
        self.fc2 = nn.Linear(4 * width, width, bias=False)
        inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
        ang = torch.outer(torch.arange(seq_len).float(), inv)
        self.register_buffer("cos", torch.cat([ang, ang], -1).cos())
        self.register_buffer("sin", torch.cat([ang, ang], -1).sin())

    def rope(self, x: torch.Tensor) -> torch.Tensor:
        h = x.shape[-1] // 2
        return x * self.cos + torch.cat([-x[..., h:], x[..., :h]], -1) * self.sin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, m = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True,
                                           scale=1.0 / self.head_dim)
        x = x + self.o(y.transpose(1, 2).reshape(b, t, m))
        return x + self.fc2(F.relu(self.fc1(self.norm2(x))))


class PlainModel(nn.Module):
    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.embed = nn.Embedding(spec.vocab, spec.width)
        self.blocks = nn.ModuleList(PlainBlock(spec.width, spec.head_dim, spec.seq_len)
                                    for _ in range(spec.depth))
        self.norm = nn.RMSNorm(spec.width, elementwise_affine=False)
        self.head = nn.Linear(spec.width, spec.vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def plain_tokens_per_s(spec: ModelSpec, hparams: HParams, steps: int, warmup: int) -> float:
    corpus = load_corpus()
    torch.manual_seed(0)
    model = PlainModel(spec)
    opt = torch.optim.AdamW(model.parameters(), lr=hparams.lr, betas=(0.9, 0.98), eps=1e-9)
    rng = np.random.default_rng(0)
    elapsed = 0.0
    for step in range(warmup + steps):
        tick = time.perf_counter()
        batch = torch.from_numpy(corpus.train_batch(rng, hparams.batch_size, spec.seq_len))
        for g in opt.param_groups:
            g["lr"] = hparams.lr * min(1.0, (step + 1) / 10)
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        loss.item()
        if step >= warmup:
            elapsed += time.perf_counter() - tick
    return steps * hparams.batch_size * spec.seq_len / elapsed


def hptransfer_tokens_per_s(spec: ModelSpec, hparams: HParams, steps: int, warmup: int
                            ) -> float:
    # Two runs: a short one warms up allocator and kernels, then the measured one. The
    # record's tokens_per_s counts only time in training steps past the first.
    train(spec, hparams, Budget(steps=warmup, eval_every=10**9, eval_tokens=spec.seq_len))
    record = train(spec, hparams, Budget(steps=steps, eval_every=10**9,
                                         eval_tokens=spec.seq_len))
    return record.tokens_per_s


def matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 1.0) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    count, tick = 0, time.perf_counter()
    while time.perf_counter() - tick < seconds:
        a @ b
        count += 1
    return 2 * n**3 * count / (time.perf_counter() - tick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="32,64,128,256")
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--precision", choices=[p.value for p in Precision], default="fp32")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    peak = matmul_peak(dtype)
    hparams = HParams(lr=2**-6, batch_size=args.batch_size)
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        spec = ModelSpec(width=width, depth=args.depth, seq_len=args.seq_len,
                         precision=args.precision)
        plain_spec = spec.model_copy(update={"precision": Precision.FP32})
        plain = plain_tokens_per_s(plain_spec, hparams, args.steps, args.warmup)
        ours = hptransfer_tokens_per_s(spec, hparams, args.steps, args.warmup)
        flops = spec.flops_per_token()
        rows.append({"width": width, "plain_fp32_tokens_per_s": round(plain),
                     "hptransfer_tokens_per_s": round(ours), "ratio": round(ours / plain, 2),
                     "hptransfer_gflops": round(ours * flops / 1e9, 1),
                     "fraction_of_peak": round(ours * flops / peak, 3)})
    result = {"precision": args.precision, "threads": torch.get_num_threads(),
              "matmul_peak_gflops": round(peak / 1e9, 1), "depth": args.depth,
              "seq_len": args.seq_len, "batch_size": args.batch_size, "rows": rows}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"precision {args.precision}, {result['threads']} threads, matmul peak "
          f"{result['matmul_peak_gflops']} GFLOP/s, depth {args.depth}, seq {args.seq_len}, "
          f"batch {args.batch_size}")
    print(f"{'width':>6} {'plain tok/s':>12} {'ours tok/s':>11} {'ratio':>6} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    for r in rows:
        print(f"{r['width']:>6} {r['plain_fp32_tokens_per_s']:>12} "
              f"{r['hptransfer_tokens_per_s']:>11} {r['ratio']:>6} {r['hptransfer_gflops']:>8} "
              f"{math.floor(r['fraction_of_peak'] * 1000) / 10:>7}%")


if __name__ == "__main__":
    main()

"""Training throughput of the built-in model on one GPU: tokens/s and model FLOP utilisation.

Trains :func:`hptransfer.training.loop.train` itself for a few steps at each width (bf16
autocast, fp32 weights and AdamW state) and reads its ``tokens_per_s`` (time in training
steps past the warm-up: the first step, the first two compiled, so a compile's time is not
in it) and ``peak_memory_bytes`` (the run's own peak: train resets CUDA's counter as each
run starts). Model FLOP utilisation (MFU) divides the achieved model FLOP/s
(:meth:`~hptransfer.models.family.ModelFamily.flops_per_token` × tokens/s: 6 × matmul
parameters + attention) by two peaks: the card's nominal dense bf16 peak where known, and a
large bf16 matmul measured here.

Run: ``python benchmarks/gpu_throughput.py --widths 1024,2048 [--steps 30]
[--compilation eager|compiled|both] [--json]``;
``--device cpu`` runs the same measurement on the CPU (fp32, tiny widths: a check of the
script, not a figure).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.models.registry import family_of
from hptransfer.spec import ModelSpec, Precision
from hptransfer.training.execution import Compilation, Execution
from hptransfer.training.loop import train

# dense bf16 peaks (FLOP/s) from the vendors' data sheets, by a name fragment
_NOMINAL = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def matmul_peak(device: str, dtype: torch.dtype, size: int = 8192, repeats: int = 20) -> float:
    """FLOP/s of a large square matmul on ``device``: what this card reaches at best."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(width: int, *, device: str, steps: int, depth: int, batch: int, seq_len: int,
            compiled: bool) -> dict:
    precision = Precision.BF16 if device.startswith("cuda") else Precision.FP32
    spec = ModelSpec(width=width, depth=depth, head_dim=128 if width >= 512 else 16,
                     seq_len=seq_len, base_width=min(width, 256), precision=precision)
    execution = Execution(compilation=Compilation.COMPILED if compiled else Compilation.EAGER)
    # 2^-11: an LR this model trains at from its first step (no warm-up in 30 steps);
    # 2^-8 ended the width-512 and wider runs as diverged at step 2 (loss 5.8 -> 9.6), and
    # a run that stops early times 1 step instead of 29
    record = train(spec, HParams(batch_size=batch, lr=2.0**-11), Budget(
        steps=steps, eval_every=steps, eval_tokens=batch * seq_len), device=device,
        execution=execution)
    if record.steps < steps:  # a figure over the steps it did train would be no figure
        raise SystemExit(f"gpu_throughput: the width-{width} run stopped after {record.steps} "
                         f"of {steps} steps ({record.status.value}: {record.reason}); no "
                         f"throughput is reported")
    flops_per_s = family_of(spec).flops_per_token(spec) * record.tokens_per_s
    return {"width": width, "depth": depth, "batch": batch, "seq_len": seq_len,
            "precision": precision.value, "compiled": compiled, "steps": record.steps,
            "final_val_loss": record.final_val_loss, "tokens_per_s": record.tokens_per_s,
            "model_tflops": flops_per_s / 1e12,
            "parameters": family_of(spec).parameter_count(spec, embedding=True),
            "timed_steps": record.timed_steps,
            "peak_memory_gib": (None if record.peak_memory_bytes is None
                                else record.peak_memory_bytes / 2**30)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", default="1024,2048")
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--compilation", choices=("eager", "compiled", "both"),
                        default="eager", help="time eager steps, torch.compile'd ones (the "
                        "compile is not timed), or both")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    name = torch.cuda.get_device_name() if cuda else "cpu"
    peak = matmul_peak(args.device, torch.bfloat16 if cuda else torch.float32,
                       size=8192 if cuda else 1024, repeats=20 if cuda else 3)
    nominal = next((v for k, v in _NOMINAL.items() if k in name), None)
    rows = []
    for width in (int(w) for w in args.widths.split(",")):
        for compiled in {"eager": (False,), "compiled": (True,),
                         "both": (False, True)}[args.compilation]:
            row = measure(width, device=args.device, steps=args.steps, depth=args.depth,
                          batch=args.batch, seq_len=args.seq_len, compiled=compiled)
            row["mfu_measured_peak"] = row["model_tflops"] * 1e12 / peak
            row["mfu_nominal_peak"] = (row["model_tflops"] * 1e12 / nominal if nominal
                                       else None)
            rows.append(row)
    if args.json:
        print(json.dumps({"device": name, "matmul_tflops": peak / 1e12,
                          "nominal_tflops": nominal / 1e12 if nominal else None,
                          "runs": rows}, indent=2))
        return
    print(f"{name}: large matmul {peak / 1e12:.3g} TFLOP/s"
          + (f", nominal {nominal / 1e12:.0f}" if nominal else ""))
    for r in rows:
        nominal_mfu = ("" if r["mfu_nominal_peak"] is None
                       else f", MFU {100 * r['mfu_nominal_peak']:.1f}% of nominal")
        print(f"width {r['width']:>5} depth {r['depth']} {r['precision']}"
              f"{' compiled' if r['compiled'] else ''}: {r['tokens_per_s']:,.0f} tokens/s, "
              f"{r['model_tflops']:.1f} TFLOP/s, MFU {100 * r['mfu_measured_peak']:.1f}% of "
              f"the measured matmul{nominal_mfu}")


if __name__ == "__main__":
    main()

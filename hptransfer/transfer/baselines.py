"""The closed-form baselines a prediction is compared against (``--baseline``).

Zero-shot µTransfer copies the best trial of the largest proxy width as is; Step Law (2025)
and DeepSeek LLM (2024) are the SP fits of docs/spec.md §4, which give an absolute per-step
LR and a batch in tokens from model size and training tokens (or compute).
"""

from __future__ import annotations

import math

from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.optimum import WidthFit
from hptransfer.study.schema import TrialRecord, TrialStatus

__all__ = ["Baseline", "baselines"]

# Closed forms of docs/spec.md §4 (SP fits: absolute per-step LR, batch in tokens).
STEP_LAW = {"lr": (1.79, -0.713, 0.307), "batch_tokens": (0.58, 0.571)}
DEEPSEEK = {"lr": (0.3118, -0.125), "batch_tokens": (0.292, 0.327)}


class Baseline(FrozenConfig):
    """A prediction some other way, to compare against (``--baseline``)."""

    lr: float
    batch_size: int | None = None
    batch_tokens: float | None = None
    weight_decay: float | None = None
    note: str


def baselines(records: list[TrialRecord], fits: list[WidthFit], spec: ModelSpec,
              tokens: int) -> dict[str, Baseline]:
    largest = max(f.evidence.width for f in fits)
    done = [r for r in records if r.width == largest and r.status is TrialStatus.COMPLETE
            and r.final_val_loss is not None and math.isfinite(r.final_val_loss)]
    best = min(done, key=lambda r: r.final_val_loss)
    sp_note = ("an SP fit: absolute per-step LR for every tensor and batch in tokens; not "
               "directly comparable to a µP base α (compare it with the hidden-matrix LR)")
    from hptransfer.models.registry import family_of

    family = family_of(spec)
    n = family.parameter_count(spec)  # non-embedding, readout included (as Step Law counts)
    per_token = family.flops_per_token(spec)
    a, alpha, beta = STEP_LAW["lr"]
    b, gamma = STEP_LAW["batch_tokens"]
    step_batch = b * tokens**gamma
    compute = per_token * tokens  # DeepSeek's C = M·D, M = non-embedding FLOPs/token
    c, delta = DEEPSEEK["lr"]
    e, zeta = DEEPSEEK["batch_tokens"]
    deepseek_batch = e * compute**zeta
    return {
        "zero-shot": Baseline(
            lr=best.hparams.lr, batch_size=best.hparams.batch_size,
            weight_decay=best.hparams.weight_decay,
            note=f"zero-shot µTransfer: the best proxy trial of the largest width {largest} "
                 f"(trial {best.number}, loss {best.final_val_loss:.4f}) copied as is"),
        "step-law": Baseline(
            lr=a * n**alpha * tokens**beta, batch_tokens=step_batch,
            batch_size=max(1, round(step_batch / spec.seq_len)),
            note=f"Step Law (2025): η = 1.79·N^−0.713·D^0.307, B = 0.58·D^0.571 tokens, "
                 f"N = {n:,} non-embedding parameters, D = {tokens:,} tokens; {sp_note}"),
        "deepseek": Baseline(
            lr=c * compute**delta, batch_tokens=deepseek_batch,
            batch_size=max(1, round(deepseek_batch / spec.seq_len)),
            note=f"DeepSeek LLM (2024): η = 0.3118·C^−0.125, B = 0.292·C^0.327 tokens, "
                 f"C = M·D = {compute:.3g} FLOPs with M = {per_token:.3g} "
                 f"non-embedding training FLOPs per token (attention included) and "
                 f"D = {tokens:,}; {sp_note}"),
    }

"""Immutable records of finished runs: what crosses module boundaries and reaches disk.

A :class:`RunRecord` holds everything needed to judge and reproduce a run: the spec,
hparams, budget and seed it ran with, the corpus it saw (with its content hash), its loss
curves, cost (tokens, FLOPs, time) and provenance. It serialises to JSON with
``record.model_dump_json()`` and back with ``RunRecord.model_validate_json``.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import Field

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.provenance import Provenance
from hptransfer.spec import FrozenConfig, ModelSpec

__all__ = ["CurvePoint", "RunRecord", "Status", "Verdict"]


class Status(str, Enum):
    COMPLETE = "complete"  # trained the whole budget
    DIVERGED = "diverged"  # stopped on NaN/inf or loss blow-up; ``reason`` says which
    PRUNED = "pruned"  # stopped by the ``on_eval`` callback (e.g. an Optuna pruner)


class Verdict(str, Enum):
    """What an ``on_eval`` callback tells the training loop."""

    CONTINUE = "continue"
    STOP = "stop"


class CurvePoint(FrozenConfig):
    step: int  # optimizer steps completed
    tokens: int  # training tokens seen
    loss: float


class RunRecord(FrozenConfig):
    status: Status
    reason: str | None = Field(None, description="why the run stopped early, if it did")
    final_val_loss: float | None = Field(
        None, description="validation loss at the last evaluation; None if never evaluated")
    final_val_bpb: float | None = Field(
        None, description="final_val_loss in bits per byte of text (comparable across "
                          "tokenizers); None when the corpus's bytes per token are unknown "
                          "(corpus.bytes_per_token_note says why)")
    val_curve: tuple[CurvePoint, ...]
    train_curve: tuple[CurvePoint, ...]
    steps: int  # optimizer steps completed
    planned_steps: int
    tokens_seen: int
    flops: float  # training FLOPs, see ModelSpec.flops_per_token
    wall_time_s: float  # whole run, including model build and evaluations
    tokens_per_s: float = Field(description=(
        "training tokens per second in the timed steps: every step but each attempt's "
        "warm-up (its first step; its first two compiled: CUDA init, allocator growth, the "
        "compile), see timed_steps"))
    timed_steps: int = Field(0, description=(
        "the steps tokens_per_s counts; all of them when no step was past a warm-up (a run "
        "of one or two steps), 0 in a record from before this field"))
    peak_memory_bytes: int | None = Field(None, description=(
        "the most accelerator memory the run had allocated at once (CUDA's "
        "max_memory_allocated, reset as the run starts: model, optimizer state, "
        "activations; the last attempt's after a resume); None on the CPU, where no "
        "per-run figure is measured"))
    resumed_at: tuple[int, ...] = Field(
        (), description="steps this run resumed from a checkpoint at (empty: trained in one "
                        "go); wall_time_s is the last attempt's, tokens_per_s all attempts'")
    spec: ModelSpec
    hparams: HParams
    budget: Budget
    seed: int
    corpus: dict[str, Any]
    parametrization: str  # µP formulation used, see hptransfer.mup.rules
    provenance: Provenance

    @property
    def ok(self) -> bool:
        return self.status is Status.COMPLETE

"""A training run as a tracker shows it: :class:`RunInfo` (what it is: study, width, trial,
hparams), :class:`RunLog` (the live handle: open in every tracker asked for, logging each
validation point as it comes) and :func:`log_result` (a one-point run: a confirmation's
verdict).

Whatever a tracker raises is caught here, in one place (:func:`_guarded`): one
:class:`~hptransfer.tracking.tracker.TrackerWarning`, and that tracker is off for the rest of
this process, so a server that went away costs one timeout, not one per point or per run.
The run itself never sees the error.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from enum import Enum
from typing import TypeVar

from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, RunRecord
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.tracking.tracker import (
    Param,
    TrackerKind,
    TrackerRun,
    Tracking,
    describe,
    off,
    open_tracker,
)

__all__ = ["RunInfo", "RunLog", "RunRole", "log_result"]

T = TypeVar("T")

# trackers that failed in this process: off until it ends (module docstring)
_failed: set[TrackerKind] = set()


class RunRole(str, Enum):
    TRIAL = "trial"  # a proxy trial of a tune
    CONFIRMATION = "confirmation"  # a run at the target width (hptransfer confirm)


class RunInfo(FrozenConfig):
    """What a tracker shows about a run besides its curves (its parameters and name)."""

    study: str  # the hptransfer study: the group its runs share
    role: RunRole = RunRole.TRIAL
    trial: int  # the Optuna trial number (in NAME.wW, or NAME.confirm.wW)
    spec: ModelSpec
    hparams: HParams
    seed: int = 0
    ladder: str | None = None  # the ladder step that chose the trial
    offset: float | None = None  # a confirmation run's LR offset in octaves
    predicted_lr: float | None = None  # the prediction a confirmation run checks

    @property
    def name(self) -> str:
        """The run's name: the width and trial, the LR in octaves; a confirmation run its
        offset, and the predicted one says so (the run a person looks for first)."""
        width = f"{self.study} w{self.spec.width}"
        if self.role is RunRole.CONFIRMATION:
            mark = " (predicted)" if self.offset == 0 else ""
            return f"{width} confirm {self.offset:+g}{mark} #{self.trial}"
        return f"{width} #{self.trial} lr 2^{math.log2(self.hparams.lr):.2f}"

    @property
    def slug(self) -> str:
        """The name as a folder name (a TensorBoard run)."""
        if self.role is RunRole.CONFIRMATION:
            mark = "-predicted" if self.offset == 0 else ""
            return f"confirm-w{self.spec.width}-t{self.trial}-offset{self.offset:+g}{mark}"
        return f"w{self.spec.width}-t{self.trial}"

    def params(self) -> dict[str, Param]:
        """Flat parameters: the study, width and trial, the ladder step, a confirmation's
        offset, every field of the hparams (per-module multipliers too), and the model's
        shape and parametrization."""
        spec = self.spec
        values: dict[str, Param | None] = {
            "study": self.study, "role": self.role.value, "trial": self.trial,
            "width": spec.width, "depth": spec.depth, "parametrization": spec.param.value,
            "base_width": spec.base_width, "head_dim": spec.head_dim, "seq_len": spec.seq_len,
            "model": spec.model, "precision": spec.precision.value, "seed": self.seed,
            "ladder": self.ladder, "offset": self.offset, "predicted_lr": self.predicted_lr,
            **{k: getattr(v, "value", v) for k, v in self.hparams},
        }
        return {k: v for k, v in values.items() if v is not None}


class RunLog:
    """A run open in every tracker of ``tracking`` (none: a no-op), for the process that
    trains it. Call :meth:`point` with each validation point and :meth:`finish` once."""

    def __init__(self, tracking: Tracking | None, info: RunInfo) -> None:
        self._runs: dict[TrackerKind, TrackerRun] = {}
        for kind in tracking.trackers if tracking is not None else ():
            run = _guarded(kind, lambda k=kind: open_tracker(k, tracking).start(
                info.study, info.name, info.slug, info.params()))
            if run is not None:
                self._runs[kind] = run

    def point(self, point: CurvePoint) -> None:
        """A validation point, as the training loop reports it."""
        for kind, run in self._runs.items():
            _guarded(kind, lambda r=run: r.log(point.step, {"val_loss": point.loss,
                                                            "tokens": float(point.tokens)}))

    def finish(self, status: str, record: RunRecord | None = None,
               reason: str | None = None) -> None:
        """End the run with its status (a ``TrialStatus`` value): with its ``record``, the
        training curve (block means, as the record keeps it), tokens/s and the cost."""
        summary: dict[str, Param] = {}
        if record is not None:
            reason = record.reason
            summary.update(tokens_per_s=record.tokens_per_s, steps=record.steps,
                           tokens_seen=record.tokens_seen, flops=record.flops,
                           wall_time_s=record.wall_time_s)
            if record.final_val_loss is not None:
                summary["final_val_loss"] = record.final_val_loss
        if reason:
            summary["reason"] = reason
        for kind, run in self._runs.items():
            for p in record.train_curve if record is not None else ():
                _guarded(kind, lambda r=run, p=p: r.log(p.step, {"train_loss": p.loss}))
            _guarded(kind, lambda r=run: r.finish(status, summary))
        self._runs.clear()


def _guarded(kind: TrackerKind, action: Callable[[], T]) -> T | None:
    """The one place a tracker's error is caught (module docstring); None when it failed,
    now or earlier in this process."""
    if kind in _failed:
        return None
    try:
        return action()
    except Exception as error:  # noqa: BLE001 - no tracker error may reach the run
        _failed.add(kind)
        off(kind, describe(error))
        return None


def log_result(tracking: Tracking | None, *, group: str, name: str, slug: str,
               params: Mapping[str, Param], summary: Mapping[str, Param], status: str) -> None:
    """A run without a curve in every tracker of ``tracking``: a result the process that
    judged it logs (a confirmation's verdict, beside its runs in their group)."""
    for kind in tracking.trackers if tracking is not None else ():
        run = _guarded(kind, lambda k=kind: open_tracker(k, tracking).start(
            group, name, slug, params))
        if run is not None:
            _guarded(kind, lambda r=run: r.finish(status, summary))

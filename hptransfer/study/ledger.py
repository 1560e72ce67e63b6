"""A study: the Optuna record of a tune, read back as immutable rows.

One hptransfer study named ``NAME`` is one Optuna study per proxy width, named
``NAME.w{width}`` in the same storage, so every sampler models one width's loss surface and
optuna-dashboard shows each width on its own. Each Optuna study carries the study's
:class:`StudyConfig` (spec template, budget, search space, corpus hash) as a user attribute;
every trial carries its width, spec, hparams, status, curves, cost and provenance. Nothing
else is stored anywhere: predict, report and plot read this.
"""

from __future__ import annotations

import json
import re
from enum import Enum
from typing import TYPE_CHECKING, Any

from pydantic import Field

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint
from hptransfer.space import SearchSpace
from hptransfer.spec import FrozenConfig, ModelSpec

if TYPE_CHECKING:
    import optuna

__all__ = ["StudyConfig", "StudyError", "TrialRecord", "TrialStatus", "WidthSummary",
           "load_config", "load_trials", "study_names", "summarize", "width_study_name",
           "widths_of"]

CONFIG_ATTR = "hptransfer_config"
_WIDTH_SUFFIX = re.compile(r"^(?P<name>.+)\.w(?P<width>\d+)$")


class StudyError(ValueError):
    """A study that cannot be used as asked (missing, or made with another config)."""


class StudyConfig(FrozenConfig):
    """What every trial of a study shares. Widths may grow; the rest must not change."""

    spec: ModelSpec = Field(description="spec template; each width study overrides width")
    budget: Budget
    space: SearchSpace
    seed: int = 0
    corpus_hash: str
    data: str | None = Field(None, description="--data path, None for the built-in corpus")

    def tokens_per_trial(self) -> int:
        """Training tokens of one trial at the base batch size (the proxies' horizon)."""
        tokens_per_step = self.space.base.batch_size * self.spec.seq_len
        return self.budget.resolve_steps(tokens_per_step=tokens_per_step) * tokens_per_step

    def spec_at(self, width: int) -> ModelSpec:
        return ModelSpec(**{**self.spec.model_dump(), "width": width})


class TrialStatus(str, Enum):
    COMPLETE = "complete"
    DIVERGED = "diverged"
    PRUNED = "pruned"
    RUNNING = "running"
    WAITING = "waiting"  # enqueued, not started
    LOST = "lost"  # its worker died; a retry was enqueued
    ERROR = "error"  # the objective raised; see ``reason``


class TrialRecord(FrozenConfig):
    """One trial as the rest of hptransfer sees it."""

    study: str
    number: int
    width: int
    status: TrialStatus
    reason: str | None = None
    hparams: HParams | None = None
    final_val_loss: float | None = None
    val_curve: tuple[CurvePoint, ...] = ()
    flops: float = 0.0
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    retry_of: int | None = None

    @property
    def finished(self) -> bool:
        """Counts towards ``--trials`` (lost trials are retried instead)."""
        return self.status in (TrialStatus.COMPLETE, TrialStatus.DIVERGED, TrialStatus.PRUNED,
                               TrialStatus.ERROR)


def width_study_name(name: str, width: int) -> str:
    return f"{name}.w{width}"


def _open(storage: optuna.storages.BaseStorage | str | None) -> optuna.storages.BaseStorage:
    """Accept an Optuna storage or a URL (None: the default local SQLite file)."""
    if storage is None or isinstance(storage, str):
        from hptransfer.study.storage import open_storage

        return open_storage(storage)
    return storage


def study_names(storage: optuna.storages.BaseStorage | str | None = None
                ) -> dict[str, list[int]]:
    """hptransfer study name → widths, for every study in ``storage``."""
    storage = _open(storage)
    found: dict[str, list[int]] = {}
    for summary in storage.get_all_studies():
        match = _WIDTH_SUFFIX.match(summary.study_name)
        if match and CONFIG_ATTR in summary.user_attrs:
            found.setdefault(match["name"], []).append(int(match["width"]))
    return {name: sorted(widths) for name, widths in sorted(found.items())}


def widths_of(name: str, storage: optuna.storages.BaseStorage | str | None = None
              ) -> list[int]:
    storage = _open(storage)
    widths = study_names(storage).get(name)
    if not widths:
        known = ", ".join(study_names(storage)) or "none"
        raise StudyError(f"no study named {name!r} in this storage (studies here: {known}); "
                         f"create it with: hptransfer tune --study {name}")
    return widths


def load_config(name: str, storage: optuna.storages.BaseStorage | str | None = None
                ) -> StudyConfig:
    import optuna

    storage = _open(storage)
    width = widths_of(name, storage)[0]
    study = optuna.load_study(study_name=width_study_name(name, width), storage=storage)
    return StudyConfig.model_validate_json(study.user_attrs[CONFIG_ATTR])


def _record(study_name: str, trial: optuna.trial.FrozenTrial) -> TrialRecord:
    from optuna.trial import TrialState

    attrs: dict[str, Any] = trial.user_attrs
    status = attrs.get("status")
    if status is None:
        status = {TrialState.RUNNING: TrialStatus.RUNNING, TrialState.WAITING:
                  TrialStatus.WAITING, TrialState.COMPLETE: TrialStatus.COMPLETE,
                  TrialState.PRUNED: TrialStatus.PRUNED}.get(trial.state, TrialStatus.ERROR)
    curve = tuple(CurvePoint(**p) for p in json.loads(attrs.get("val_curve", "[]")))
    return TrialRecord(
        study=study_name, number=trial.number,
        width=int(attrs.get("width") or _WIDTH_SUFFIX.match(study_name)["width"]),
        status=TrialStatus(status), reason=attrs.get("reason"),
        hparams=HParams.model_validate_json(attrs["hparams"]) if "hparams" in attrs else None,
        final_val_loss=attrs.get("final_val_loss"), val_curve=curve,
        flops=attrs.get("flops", 0.0), wall_time_s=attrs.get("wall_time_s", 0.0),
        tokens_per_s=attrs.get("tokens_per_s", 0.0), retry_of=attrs.get("retry_of"))


def load_trials(name: str, storage: optuna.storages.BaseStorage | str | None = None,
                widths: list[int] | None = None) -> list[TrialRecord]:
    """Every trial of study ``name`` (all widths unless given), as immutable records.

    ``storage`` is an Optuna storage or a URL (None: the default local SQLite file).
    """
    import optuna

    storage = _open(storage)
    records = []
    for width in widths or widths_of(name, storage):
        study_name = width_study_name(name, width)
        study = optuna.load_study(study_name=study_name, storage=storage)
        records.extend(_record(study_name, t) for t in study.get_trials(deepcopy=False))
    return records


class WidthSummary(FrozenConfig):
    """What a width's trials amount to: counts, the best trial, and what they cost."""

    width: int
    finished: int
    complete: int
    diverged: int
    pruned: int
    lost: int
    errors: int
    best_number: int | None
    best_loss: float | None
    best_hparams: HParams | None
    flops: float
    wall_time_s: float


def summarize(records: list[TrialRecord]) -> list[WidthSummary]:
    """One summary per width, in width order."""
    out = []
    for width in sorted({r.width for r in records}):
        rows = [r for r in records if r.width == width]
        complete = [r for r in rows if r.status is TrialStatus.COMPLETE]
        best = min(complete, key=lambda r: r.final_val_loss, default=None)

        def count(status: TrialStatus, rows=rows) -> int:
            return sum(1 for r in rows if r.status is status)

        out.append(WidthSummary(
            width=width, finished=sum(1 for r in rows if r.finished), complete=len(complete),
            diverged=count(TrialStatus.DIVERGED), pruned=count(TrialStatus.PRUNED),
            lost=count(TrialStatus.LOST), errors=count(TrialStatus.ERROR),
            best_number=best.number if best else None,
            best_loss=best.final_val_loss if best else None,
            best_hparams=best.hparams if best else None,
            flops=sum(r.flops for r in rows), wall_time_s=sum(r.wall_time_s for r in rows)))
    return out

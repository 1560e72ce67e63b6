"""Where a tune's trials run: the seam between the tune and its runners, and placement.

:func:`hptransfer.study.tune.tune` hands each width to a :class:`TrialRunner` as a
:class:`WidthJob`: :class:`~hptransfer.study.worker.LocalRunner` (this machine) or a
backend's (:class:`hptransfer.backends.ray_tune.RayTune`). :func:`auto_placement` says how
trials (and confirmation runs) share this machine's CPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from pydantic import Field

from hptransfer.spec import FrozenConfig
from hptransfer.study.config import StudyConfig
from hptransfer.study.schema import TrialRecord
from hptransfer.study.search import Pruning, SamplerKind
from hptransfer.tracking import Tracking

if TYPE_CHECKING:
    import optuna

    from hptransfer.data.corpus import Corpus
    from hptransfer.study.ladder import Ladder

__all__ = ["AUTO", "AUTO_MAX_WIDTH", "AUTO_MAX_WORKERS", "Placement", "TrialRunner", "WidthJob",
           "auto_placement"]


@dataclass(frozen=True)
class WidthJob:
    """One width of a tune, as a runner gets it: run trials of ``study`` until it holds
    ``trials`` finished ones."""

    study: optuna.Study  # the width's Optuna study, created and warm-started
    name: str  # the hptransfer study
    width: int
    config: StudyConfig
    storage_url: str
    trials: int
    sampler: SamplerKind
    pruning: Pruning
    corpus: Corpus
    on_trial: Callable[[TrialRecord], None] | None
    ladder: Ladder | None = None  # the ladder search's planner of this width, if it is one
    tracking: Tracking | None = None  # the trackers its trials are logged to (checked ready)


class TrialRunner(Protocol):
    """Where a tune's trials run. ``prepare`` refuses, before anything is created, what
    this runner cannot do; ``run_width`` runs one width's trials."""

    def prepare(self, storage_url: str, pruning: Pruning, sampler: SamplerKind) -> None: ...

    def run_width(self, job: WidthJob) -> None: ...


AUTO = "auto"
# ``workers="auto"``: at proxy widths a trial's matmuls are too small to keep several threads
# busy, so trials side by side with one thread each do more per hour than one trial with all
# of them (measured on 2 cores: 1.8× at width 64, 1.3× at width 128; docs/tuning.md). Up to
# this width each trial gets 1 thread (or --threads), and as many run at once as the CPUs
# allow, at most AUTO_MAX_WORKERS (a ladder round holds 2 to 5 trials); wider, one process.
AUTO_MAX_WIDTH = 256
AUTO_MAX_WORKERS = 4


class Placement(FrozenConfig):
    """How one width's trials share this machine: processes × torch threads per trial."""

    workers: int
    threads: int
    auto: bool = Field(description="chosen by workers='auto' from the width and the CPUs")

    def describe(self) -> str:
        how = "auto" if self.auto else "as asked"
        return (f"{self.workers} worker{'s' if self.workers > 1 else ''} × {self.threads} "
                f"thread{'s' if self.threads > 1 else ''} per trial ({how})")


def auto_placement(width: int, cpus: int, threads: int | None = None) -> Placement:
    """``workers="auto"``: the placement of trials of ``width`` on ``cpus`` CPUs (see
    ``AUTO_MAX_WIDTH``); ``threads`` fixes the threads per trial."""
    if width > AUTO_MAX_WIDTH:
        return Placement(workers=1, threads=threads or cpus, auto=True)
    per_trial = threads or 1
    return Placement(workers=max(1, min(AUTO_MAX_WORKERS, cpus // per_trial)),
                     threads=per_trial, auto=True)

"""Experiment trackers: every trial and confirmation run shown in W&B, MLflow or
TensorBoard, besides the study storage (which stays the one record of every run).

- :mod:`~hptransfer.tracking.tracker`: :class:`Tracking` (which trackers, where their local
  files go), :class:`TrackerKind`, the :class:`Tracker` protocol an adapter follows, and
  :func:`ready` (a tracker that cannot work is off, with one warning);
- :mod:`~hptransfer.tracking.run`: :class:`RunInfo` (a run's name and parameters) and
  :class:`RunLog`, a run open in every tracker, for the process that trains it;
- one adapter per library: :mod:`~hptransfer.tracking.wandb`,
  :mod:`~hptransfer.tracking.mlflow`, :mod:`~hptransfer.tracking.tensorboard`, each imported
  only when its tracker is asked for (``pip install 'hptransfer[wandb]'`` and so on).

docs/trackers.md has a recipe per tracker.
"""

from __future__ import annotations

from hptransfer.tracking.run import RunInfo, RunLog, RunRole, log_result
from hptransfer.tracking.tracker import (
    Tracker,
    TrackerKind,
    TrackerRun,
    TrackerWarning,
    Tracking,
    ready,
    resolve,
)

__all__ = ["RunInfo", "RunLog", "RunRole", "Tracker", "TrackerKind", "TrackerRun",
           "TrackerWarning", "Tracking", "log_result", "ready", "resolve"]

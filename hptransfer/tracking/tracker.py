"""Which experiment trackers a study logs to, and the one protocol each library's adapter
follows.

:class:`Tracking` is the typed config (``--tracker wandb --tracker mlflow``, the ``[tune]``
key ``tracker``, or ``$HPTRANSFER_TRACKER``); :class:`Tracker` and :class:`TrackerRun` are
the seam: an adapter opens a run in a group, logs points and ends it, with the library's own
client. Adapters are looked up by name in a dict of lazy importers, so ``import hptransfer``
and every run without a tracker load none of W&B, MLflow or TensorBoard.

A tracker is a window on the runs, never their record: the Optuna storage is. So a tracker
that cannot work (not installed, no server, no credentials) is turned off with one warning
(:func:`ready`) and the runs go on.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Protocol

from pydantic import Field

from hptransfer.errors import ConfigError
from hptransfer.spec import FrozenConfig

__all__ = ["ENV", "Param", "Tracker", "TrackerKind", "TrackerRun", "TrackerWarning", "Tracking",
           "describe", "install_line", "off", "open_tracker", "parse", "ready", "resolve"]

ENV = "HPTRANSFER_TRACKER"  # the default trackers: names separated by commas or spaces

Param = str | int | float | bool  # what every tracker can show as a run's parameter


class TrackerKind(str, Enum):
    """An experiment tracker hptransfer can log to, each through its own client."""

    WANDB = "wandb"  # Weights & Biases (online, or offline: WANDB_MODE=offline)
    MLFLOW = "mlflow"  # MLflow: MLFLOW_TRACKING_URI, else a SQLite store in the folder
    TENSORBOARD = "tensorboard"  # TensorBoard event files, via torch.utils.tensorboard


class TrackerWarning(UserWarning):
    """A tracker that could not log: it is off, the run goes on, the storage has it all."""


class Tracking(FrozenConfig):
    """Where the runs of a study are shown besides the study storage.

    >>> Tracking(trackers=("tensorboard",)).trackers
    (<TrackerKind.TENSORBOARD: 'tensorboard'>,)
    """

    trackers: tuple[TrackerKind, ...] = Field(
        (), description="trackers every trial and confirmation run is logged to")
    folder: str | None = Field(
        None, description="where local tracker files go: W&B's wandb/ folder, MLflow's "
                          "mlflow.db (unless MLFLOW_TRACKING_URI is set), TensorBoard's runs/ "
                          "(None: the current directory, each library's own default)")

    def place(self) -> Path:
        """The folder of local tracker files, absolute: worker processes and Ray workers on
        this machine start elsewhere and must write to the same place."""
        return Path(self.folder or os.getcwd()).expanduser().resolve()


class TrackerRun(Protocol):
    """One run, open in a tracker."""

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        """Values at optimizer step ``step``; steps of different metrics may interleave."""

    def finish(self, status: str, summary: Mapping[str, Param]) -> None:
        """End the run: its final status (a ``TrialStatus`` value, shown as ``status``) and
        its summary values."""


class Tracker(Protocol):
    """One tracking library. ``check`` raises, saying why, when it cannot log here (no
    server, no credentials); ``start`` opens a run named ``name`` in the group ``group``
    (W&B group, MLflow experiment, TensorBoard run folder), ``slug`` being the name as a
    file name."""

    def check(self) -> None: ...

    def start(self, group: str, name: str, slug: str, params: Mapping[str, Param]
              ) -> TrackerRun: ...


# the adapters, imported on first use: (module, class)
_ADAPTERS = {TrackerKind.WANDB: ("hptransfer.tracking.wandb", "WandbTracker"),
             TrackerKind.MLFLOW: ("hptransfer.tracking.mlflow", "MlflowTracker"),
             TrackerKind.TENSORBOARD: ("hptransfer.tracking.tensorboard", "TensorBoardTracker")}


def install_line(kind: TrackerKind) -> str:
    return f"pip install 'hptransfer[{kind.value}]'"


def open_tracker(kind: TrackerKind, tracking: Tracking) -> Tracker:
    """The adapter of ``kind``; ImportError (with the install line) when its library is
    missing."""
    module, name = _ADAPTERS[kind]
    return getattr(importlib.import_module(module), name)(tracking.place())


def parse(text: str, where: str) -> tuple[TrackerKind, ...]:
    """Tracker names separated by commas or spaces; a name that is none is a usage error."""
    names = [n for n in text.replace(",", " ").split() if n]
    known = ", ".join(k.value for k in TrackerKind)
    unknown = [n for n in names if n not in {k.value for k in TrackerKind}]
    if unknown:
        raise ConfigError(f"{where}: unknown tracker(s) {', '.join(map(repr, unknown))}; "
                          f"known: {known}")
    return tuple(dict.fromkeys(TrackerKind(n) for n in names))


def resolve(trackers: tuple[TrackerKind | str, ...] | None = None,
            folder: str | None = None) -> Tracking:
    """The tracking a command asked for: ``trackers`` when given (flags, a config file, the
    Python API), else ``$HPTRANSFER_TRACKER``."""
    if trackers is None:
        trackers = parse(os.environ.get(ENV, ""), f"${ENV}")
    return Tracking(trackers=tuple(dict.fromkeys(trackers)), folder=folder)


def ready(tracking: Tracking) -> Tracking:
    """``tracking`` with only the trackers that can log here, its folder made absolute; one
    :class:`TrackerWarning` for each that cannot (its library missing: the install line;
    its server unreachable; no credentials). Called once, by the process that starts the
    runs, before any: a tracker that is down then costs one check, not one per run, and
    every worker it starts gets the same list."""
    if not tracking.trackers:
        return tracking
    working = []
    for kind in tracking.trackers:
        try:
            open_tracker(kind, tracking).check()
        except ImportError as error:
            off(kind, f"its library is not installed ({error.name or error}); "
                      f"{install_line(kind)}")
            continue
        except Exception as error:  # noqa: BLE001 - whatever the library raises, the run goes on
            off(kind, describe(error))
            continue
        working.append(kind)
    return Tracking(trackers=tuple(working), folder=str(tracking.place()))


def describe(error: BaseException) -> str:
    """An exception in one line (a server's error can be a page long)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def off(kind: TrackerKind, why: str) -> None:
    warnings.warn(f"tracker {kind.value} is off: {why}. The runs go on and are recorded in "
                  f"the study storage as always", TrackerWarning, stacklevel=3)

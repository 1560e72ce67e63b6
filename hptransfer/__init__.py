"""hptransfer: tune hyperparameters on small µP proxies, transfer them to the model you train.

``import hptransfer`` stays light (no torch, Optuna or Ray import); the public names below
are loaded on first use. docs/architecture.md shows which layer each comes from.

>>> import hptransfer
>>> hptransfer.ModelSpec(width=64).heads
4
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily, on first attribute access)
_EXPORTS = {
    "ModelSpec": "hptransfer.spec",
    "Parametrization": "hptransfer.spec",
    "Precision": "hptransfer.spec",
    "HParams": "hptransfer.hparams",
    "WeightDecay": "hptransfer.hparams",
    "Budget": "hptransfer.budget",
    "RunRecord": "hptransfer.record",
    "Status": "hptransfer.record",
    "SearchSpace": "hptransfer.space",
    "HPTransferError": "hptransfer.errors",
    "Corpus": "hptransfer.data.corpus",
    "load_corpus": "hptransfer.data.corpus",
    "Transformer": "hptransfer.models.transformer",
    "train": "hptransfer.training.loop",
    "coord_check": "hptransfer.checks.coord_check",
    "StudyConfig": "hptransfer.study.config",
    "study_config": "hptransfer.study.config",
    "load_trials": "hptransfer.study.records",
    "summarize": "hptransfer.study.records",
    "LocalRunner": "hptransfer.study.worker",
    "TuneResult": "hptransfer.study.tune",
    "tune": "hptransfer.study.tune",
    "Prediction": "hptransfer.transfer",
    "PredictionError": "hptransfer.errors",
    "predict_hparams": "hptransfer.transfer",
    "Confirmation": "hptransfer.confirmation.verdict",
    "confirm": "hptransfer.confirmation.runs",
    "write_coord_check": "hptransfer.report.coord_check",
    "write_plot_page": "hptransfer.report.study_report",
    "write_report": "hptransfer.report.study_report",
    "Tracking": "hptransfer.tracking",
    "TrackerKind": "hptransfer.tracking",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from hptransfer.budget import Budget
    from hptransfer.checks.coord_check import coord_check
    from hptransfer.confirmation.runs import confirm
    from hptransfer.confirmation.verdict import Confirmation
    from hptransfer.data.corpus import Corpus, load_corpus
    from hptransfer.errors import HPTransferError, PredictionError
    from hptransfer.hparams import HParams, WeightDecay
    from hptransfer.models.transformer import Transformer
    from hptransfer.record import RunRecord, Status
    from hptransfer.report.coord_check import write_coord_check
    from hptransfer.report.study_report import write_plot_page, write_report
    from hptransfer.space import SearchSpace
    from hptransfer.spec import ModelSpec, Parametrization, Precision
    from hptransfer.study.config import StudyConfig, study_config
    from hptransfer.study.records import load_trials, summarize
    from hptransfer.study.tune import TuneResult, tune
    from hptransfer.study.worker import LocalRunner
    from hptransfer.tracking import TrackerKind, Tracking
    from hptransfer.training.loop import train
    from hptransfer.transfer import Prediction, predict_hparams


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hptransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

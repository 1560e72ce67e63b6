"""hptransfer: tune hyperparameters on small µP proxies, transfer them to the model you train.

``import hptransfer`` stays light (no torch import); the public names below are loaded on
first use.

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
    "Corpus": "hptransfer.data.corpus",
    "load_corpus": "hptransfer.data.corpus",
    "RunRecord": "hptransfer.record",
    "Status": "hptransfer.record",
    "Transformer": "hptransfer.models.transformer",
    "train": "hptransfer.train.loop",
    "coord_check": "hptransfer.checks.coord_check",
    "SearchSpace": "hptransfer.space",
    "StudyConfig": "hptransfer.study.ledger",
    "load_trials": "hptransfer.study.ledger",
    "TuneResult": "hptransfer.study.tune",
    "study_config": "hptransfer.study.tune",
    "tune": "hptransfer.study.tune",
    "Prediction": "hptransfer.transfer",
    "predict_hparams": "hptransfer.transfer",
    "Confirmation": "hptransfer.confirm.runs",
    "confirm": "hptransfer.confirm.runs",
    "write_report": "hptransfer.report.study_report",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from hptransfer.budget import Budget
    from hptransfer.checks.coord_check import coord_check
    from hptransfer.confirm.runs import Confirmation, confirm
    from hptransfer.data.corpus import Corpus, load_corpus
    from hptransfer.hparams import HParams, WeightDecay
    from hptransfer.models.transformer import Transformer
    from hptransfer.record import RunRecord, Status
    from hptransfer.report.study_report import write_report
    from hptransfer.space import SearchSpace
    from hptransfer.spec import ModelSpec, Parametrization, Precision
    from hptransfer.study.ledger import StudyConfig, load_trials
    from hptransfer.study.tune import TuneResult, study_config, tune
    from hptransfer.train.loop import train
    from hptransfer.transfer import Prediction, predict_hparams


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hptransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

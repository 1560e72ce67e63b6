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
    "Corpus": "hptransfer.corpus",
    "load_corpus": "hptransfer.corpus",
    "RunRecord": "hptransfer.record",
    "Status": "hptransfer.record",
    "Transformer": "hptransfer.model",
    "train": "hptransfer.training",
    "coord_check": "hptransfer.coord_check",
    "SearchSpace": "hptransfer.space",
    "StudyConfig": "hptransfer.study",
    "load_trials": "hptransfer.study",
    "TuneResult": "hptransfer.tuning",
    "study_config": "hptransfer.tuning",
    "tune": "hptransfer.tuning",
    "Prediction": "hptransfer.transfer",
    "predict_hparams": "hptransfer.transfer",
    "Confirmation": "hptransfer.confirmation",
    "confirm": "hptransfer.confirmation",
    "write_report": "hptransfer.report",
}

__all__ = ["__version__", *_EXPORTS]

if TYPE_CHECKING:
    from hptransfer.budget import Budget
    from hptransfer.confirmation import Confirmation, confirm
    from hptransfer.coord_check import coord_check
    from hptransfer.corpus import Corpus, load_corpus
    from hptransfer.hparams import HParams, WeightDecay
    from hptransfer.model import Transformer
    from hptransfer.record import RunRecord, Status
    from hptransfer.report import write_report
    from hptransfer.space import SearchSpace
    from hptransfer.spec import ModelSpec, Parametrization, Precision
    from hptransfer.study import StudyConfig, load_trials
    from hptransfer.training import train
    from hptransfer.transfer import Prediction, predict_hparams
    from hptransfer.tuning import TuneResult, study_config, tune


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hptransfer' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value

"""The transfer predictor: the optimum hparams at a width too large to tune.

Three steps, each a module with a recorded result (docs/transfer.md explains every choice):
the optimum of each proxy width (:mod:`~hptransfer.study.optimum`: a parabola in
log2(lr) with a bootstrap interval; the near-optimal band for weight decay and batch), the
fit of each optimum against width (:mod:`~hptransfer.transfer.fit`: the drift per doubling
and whether transfer holds), and the named rules to the target
(:mod:`~hptransfer.transfer.rules`: width, stability, weight decay, batch, horizon, depth).
:mod:`~hptransfer.transfer.predictor` runs them on a study's trials and returns a
:class:`Prediction`, compared with the closed-form :mod:`~hptransfer.transfer.baselines`.
"""

from hptransfer.study.optimum import BAND as BAND
from hptransfer.study.optimum import CONFIDENCE as CONFIDENCE
from hptransfer.study.optimum import MIN_BAND_TRIALS as MIN_BAND_TRIALS
from hptransfer.study.optimum import WINDOW_OCTAVES as WINDOW_OCTAVES
from hptransfer.study.optimum import Estimate, WidthEvidence
from hptransfer.transfer.baselines import DEEPSEEK as DEEPSEEK
from hptransfer.transfer.baselines import STEP_LAW as STEP_LAW
from hptransfer.transfer.baselines import Baseline
from hptransfer.transfer.fit import MIN_SPREAD as MIN_SPREAD
from hptransfer.transfer.fit import TransferFit, TransferModel
from hptransfer.transfer.prediction import Evidence, Prediction
from hptransfer.transfer.predictor import MIN_COMPLETE as MIN_COMPLETE
from hptransfer.transfer.predictor import PredictionError, predict_from_trials, predict_hparams
from hptransfer.transfer.rules import DRIFT_THRESHOLD as DRIFT_THRESHOLD
from hptransfer.transfer.rules import EXTRAPOLATION_SPREAD_WARN as EXTRAPOLATION_SPREAD_WARN
from hptransfer.transfer.rules import HORIZON_EXPONENT as HORIZON_EXPONENT
from hptransfer.transfer.rules import LOO_WARN as LOO_WARN
from hptransfer.transfer.rules import Rule

# The public surface. The constants imported above (the choices, each explained where it is
# used) also stay importable from here, as they were from the single transfer.py.
__all__ = ["Baseline", "Estimate", "Evidence", "Prediction", "PredictionError", "Rule",
           "TransferFit", "TransferModel", "WidthEvidence", "predict_from_trials",
           "predict_hparams"]

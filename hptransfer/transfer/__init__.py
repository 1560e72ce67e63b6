"""The transfer predictor: the optimum hparams at a width too large to tune (docs/spec.md §3–5).

Three steps, each with a recorded result (docs/transfer.md explains the choices):

1. **Optimum per width** (:mod:`hptransfer.transfer.optimum`). The LR optimum of one width
   is the vertex of a quadratic in log2(lr) fitted to the completed trials within
   ``window`` octaves of the best one (the loss is roughly a parabola in log2 lr near its
   minimum, docs/spec.md §5), with a bootstrap interval (trials resampled, quadratic refitted).
   Diverged trials are not losses: the smallest diverged LR bounds the optimum from above.
   Weight decay and batch size, whose loss surfaces are flat, come from the near-optimal
   *band* (DeepSeek, Step Law): the loss-weighted median over the trials within ``band`` of
   the best loss.
2. **Transfer across widths** (:mod:`hptransfer.transfer.fit`). Per hparam, log2(optimum)
   against log2(width) by weighted least squares (weights from each width's bootstrap
   spread); the slope is the drift in octaves per doubling of width, with a bootstrap
   interval. A slope interval containing 0 means µP transfer holds: the prediction is the
   weighted mean (constant model). Otherwise it is extrapolated log-linearly, and a slope
   beyond ``DRIFT_THRESHOLD`` is announced loudly. A leave-one-width-out check predicts each
   width from the others.
3. **Beyond width** (:mod:`hptransfer.transfer.rules`). Named rules for weight decay (by the
   study's convention, docs/spec.md §3), a different target batch (√k), a longer
   horizon (η* ∝ D^−β) and depth (CompleteP studies only; a warning otherwise).

:mod:`hptransfer.transfer.predictor` runs the three steps on a study's trials
(:func:`predict_hparams`, :func:`predict_from_trials`) and returns a :class:`Prediction`
record (:mod:`hptransfer.transfer.prediction`: intervals, rules, warnings, evidence, and
its torch and Hugging Face exports), with the closed-form baselines of
:mod:`hptransfer.transfer.baselines` to compare against.
"""

from hptransfer.transfer.baselines import DEEPSEEK as DEEPSEEK
from hptransfer.transfer.baselines import STEP_LAW as STEP_LAW
from hptransfer.transfer.baselines import Baseline
from hptransfer.transfer.fit import MIN_SPREAD as MIN_SPREAD
from hptransfer.transfer.fit import TransferFit, TransferModel
from hptransfer.transfer.optimum import BAND as BAND
from hptransfer.transfer.optimum import CONFIDENCE as CONFIDENCE
from hptransfer.transfer.optimum import MIN_BAND_TRIALS as MIN_BAND_TRIALS
from hptransfer.transfer.optimum import WINDOW_OCTAVES as WINDOW_OCTAVES
from hptransfer.transfer.optimum import Estimate, WidthEvidence
from hptransfer.transfer.prediction import HF_WARNING as HF_WARNING
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

"""The score that decides: the loss the target reaches at the predicted hparams, against a
standard-parametrization (SP) model of the same width tuned on its own LR grid.

A confirmation says whether the predicted LR is the best LR *for the µP model*; a user also
asks whether that model beats the one they would have trained without hptransfer — an SP
model of the target's width whose LR they grid-searched. :func:`tune_sp_baseline` trains
that baseline on the study's data, budget and seed: an SP model at the target width on an
octave LR grid of ``points`` points, every other hparam at the prediction's (λ, batch,
schedule), recorded as the hptransfer study ``{study}.sp-baseline`` (its one width study
``{study}.sp-baseline.w{width}``: resumable and leased like any tune). The grid is centred
on the LR µP gives the target's hidden matrices (α/m under the relative rule): at this
budget SP's optimum sat within half an octave of it at widths 256 and 512 (docs/transfer.md,
"The score"). :func:`score` compares the baseline's best run with the confirmation run at
the prediction (offset 0): same data, same tokens, same seed, so the gap is the
parametrization's and the LR's doing.
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field

from hptransfer.errors import PredictionError, StudyError
from hptransfer.spec import FrozenConfig, ModelSpec, Parametrization

__all__ = ["BASELINE_POINTS", "Score", "baseline_study_name", "load_score", "score",
           "tune_sp_baseline"]

BASELINE_POINTS = 5  # an octave grid of 5 LRs: the centre ±2 octaves
BASELINE_SUFFIX = ".sp-baseline"


class BaselineRun(FrozenConfig):
    lr: float
    loss: float | None
    status: str


class Score(FrozenConfig):
    """The target's loss at the prediction against the best grid-tuned SP run at the same
    width (``gap`` = prediction − baseline, in nats; negative: the prediction is better)."""

    study: str
    target_width: int
    predicted_lr: float
    loss_at_prediction: float | None = Field(None, description="the confirmation run at "
                                                               "offset 0; None until it ran")
    baseline: tuple[BaselineRun, ...]
    baseline_lr: float | None = None
    baseline_loss: float | None = None
    gap: float | None = Field(None, description="loss at the prediction − the baseline's best")
    gap_fraction: float | None = Field(None, description="gap / the baseline's best")
    noise: float | None = Field(None, description="seed noise per run (relative), if measured")
    edge: bool = Field(False, description="the baseline's best LR is an end of its grid: "
                                          "its optimum may lie beyond it")

    def verdict(self) -> str:
        """BETTER, EQUAL (within two runs' seed noise at 2σ), WORSE or n/a."""
        from hptransfer.confirmation.verdict import noise_margin

        if self.gap_fraction is None:
            return "n/a"
        margin = noise_margin(self.noise)
        if abs(self.gap_fraction) <= margin:
            return "EQUAL"
        return "BETTER" if self.gap_fraction < 0 else "WORSE"

    def summary(self) -> str:
        """One line for a terminal or a report."""
        if self.loss_at_prediction is None or self.baseline_loss is None:
            return (f"width {self.target_width}: no score yet (needs the confirmation run at "
                    f"the prediction and a finished SP baseline grid)")
        within = ("" if self.noise is None
                  else f", seed noise {100 * self.noise:.2f}% per run")
        text = (f"width {self.target_width}: µP at the prediction {self.loss_at_prediction:.4f} "
                f"vs the best grid-tuned SP {self.baseline_loss:.4f} (lr "
                f"2^{math.log2(self.baseline_lr):.0f}): {self.gap:+.4f} nats "
                f"({100 * self.gap_fraction:+.2f}%{within}) → {self.verdict()}")
        if self.edge:
            text += ("; SP's best is at the end of its grid, so its optimum may lie beyond: "
                     "rerun with more --points")
        return text


def baseline_study_name(study: str) -> str:
    from hptransfer.study.names import check_name

    return f"{check_name(study)}{BASELINE_SUFFIX}"


def _baseline_config(study: str, target_width: int, storage: Any, points: int):
    """The SP grid study's config: the study's spec as SP at the same base width, the
    prediction's hparams, an octave LR grid of ``points`` around µP's hidden-matrix LR."""
    from hptransfer.mup.rules import hidden_lr
    from hptransfer.space import SearchSpace
    from hptransfer.study.attributes import load_config
    from hptransfer.study.config import roles_digest
    from hptransfer.transfer import predict_hparams

    if points < 3 or points % 2 == 0:
        raise ValueError(f"points must be an odd number of 3 or more (the centre and as many "
                         f"octaves on each side), got {points}")
    config = load_config(study, storage)
    prediction = predict_hparams(target_width, study=study, storage=storage)
    centre = round(math.log2(hidden_lr(prediction.spec, prediction.hparams.lr)))
    half = points // 2
    fields = config.spec.model_dump()
    # SP's own constants (attention, readout init), not the µP study's: the baseline is the
    # model the user would train without µP
    for key in ("attention_scale", "readout_init"):
        fields.pop(key)
    spec = ModelSpec(**{**fields, "param": Parametrization.SP})
    base = prediction.hparams.model_copy(update={"embedding_lr_mult": 1.0, "readout_mult": 1.0})
    space = SearchSpace(lr=(2.0 ** (centre - half), 2.0 ** (centre + half)), base=base)
    return config.model_copy(update={"spec": spec, "space": space,
                                     "roles_digest": roles_digest(spec)}), prediction


def tune_sp_baseline(target_width: int, *, study: str = "proxy", storage: Any = None,
                     points: int = BASELINE_POINTS, runner=None, on_trial=None,
                     tracking=None):
    """Train the SP baseline grid at ``target_width`` for ``study`` (module docstring);
    running it again trains only what is missing. Returns the tune's result."""
    from hptransfer.study.names import open_storage_arg
    from hptransfer.study.search import SamplerKind, WarmStart
    from hptransfer.study.storage import Access
    from hptransfer.study.tune import tune

    url = storage if storage is None or isinstance(storage, str) else None
    opened = open_storage_arg(storage, Access.UPDATE)
    try:
        config, _ = _baseline_config(study, target_width, opened, points)
    except StudyError as error:
        raise PredictionError(str(error)) from None
    return tune(config, study=baseline_study_name(study), widths=(target_width,),
                trials=points, storage=url if url is not None else opened,
                sampler=SamplerKind.GRID, warm_start=WarmStart.NONE, runner=runner,
                on_trial=on_trial, tracking=tracking)


def score(study: str, target_width: int, storage: Any = None) -> Score:
    """The score of ``study``'s prediction at ``target_width`` from what is recorded (its
    confirmation run at offset 0 and its SP baseline); nothing is trained."""
    from hptransfer.confirmation.runs import load_confirmation
    from hptransfer.study.attributes import study_names
    from hptransfer.study.names import open_storage_arg
    from hptransfer.study.records import load_trials
    from hptransfer.study.schema import TrialStatus

    storage = open_storage_arg(storage)
    confirmation = load_confirmation(study, target_width, storage)
    predicted_lr = None if confirmation is None else confirmation.predicted_lr
    at_prediction = None if confirmation is None else next(
        (r.loss for r in confirmation.runs if r.offset == 0.0
         and r.status is TrialStatus.COMPLETE), None)
    name = baseline_study_name(study)
    rows = []
    if target_width in study_names(storage).get(name, []):
        rows = [r for r in load_trials(name, storage, widths=[target_width]) if r.finished]
    runs = tuple(sorted((BaselineRun(lr=r.hparams.lr, loss=r.final_val_loss,
                                     status=r.status.value) for r in rows),
                        key=lambda run: run.lr))
    complete = [r for r in runs if r.status == TrialStatus.COMPLETE.value
                and r.loss is not None and math.isfinite(r.loss)]
    best = min(complete, key=lambda r: r.loss) if complete else None
    gap = None if best is None or at_prediction is None else at_prediction - best.loss
    if predicted_lr is None:
        from hptransfer.transfer import predict_hparams

        predicted_lr = predict_hparams(target_width, study=study, storage=storage).hparams.lr
    return Score(study=study, target_width=target_width, predicted_lr=predicted_lr,
                 loss_at_prediction=at_prediction, baseline=runs,
                 baseline_lr=None if best is None else best.lr,
                 baseline_loss=None if best is None else best.loss, gap=gap,
                 gap_fraction=None if gap is None else gap / best.loss,
                 noise=None if confirmation is None else confirmation.noise,
                 edge=best is not None and len(runs) > 1 and best.lr in (runs[0].lr,
                                                                        runs[-1].lr))


def load_score(study: str, target_width: int, storage: Any = None) -> Score | None:
    """:func:`score` when ``study`` has an SP baseline at ``target_width``; else None."""
    from hptransfer.study.attributes import study_names
    from hptransfer.study.names import open_storage_arg

    storage = open_storage_arg(storage)
    if target_width not in study_names(storage).get(baseline_study_name(study), []):
        return None
    return score(study, target_width, storage)

"""The verdict on a prediction, from its confirmation runs (pure: no storage, no training).

With ``regret = (loss at the prediction − best loss) / best loss`` over the completed runs:

- ``CONFIRMED``: the prediction's regret is at most ``tolerance`` (:data:`TOLERANCE`, 0.5%:
  the regret target of docs/spec.md §5, and several times the loss difference half an
  octave of LR makes near the optimum of a short proxy bowl, so a prediction inside the
  flat bottom passes), or, when the study measured its seed noise, within the regret that
  noise alone makes between two runs (:func:`noise_margin`, with a note saying so: short
  runs near the edge of stability differ by more than 0.5% from seed to seed, and a
  verdict must not claim what the runs cannot show);
- ``OPTIMUM HIGHER`` / ``OPTIMUM LOWER``: the best run sits at a positive / negative offset
  and beats the prediction by more than the tolerance. When it is the largest / smallest
  offset tried the direction is still established (the runs are paired), but the optimum
  may lie further out: a note says so, and the regret is then a lower bound;
- ``INCONCLUSIVE``: the predicted point itself did not complete (diverged, failed or still
  running), or fewer than two runs completed.

>>> runs = [ConfirmationRun(offset=o, lr=2.0**(o - 6), status=TrialStatus.COMPLETE, loss=l)
...         for o, l in [(-1, 3.10), (0, 3.00), (1, 3.05)]]
>>> judge(runs).verdict.value, judge(runs).regret
('CONFIRMED', 0.0)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import NamedTuple

from pydantic import Field

from hptransfer.data.source import CorpusRecord
from hptransfer.hparams import HParams
from hptransfer.spec import FrozenConfig
from hptransfer.study.schema import TrialStatus

__all__ = ["DEFAULT_OFFSETS", "MAX_OFFSET", "NOISE_SIGMAS", "OFFSET_MATCH", "TOLERANCE",
           "Confirmation", "ConfirmationRun", "ConfirmationVerdict", "Judgement",
           "check_offsets", "judge", "noise_margin", "summarize"]

DEFAULT_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0)  # octaves of LR around the prediction
TOLERANCE = 0.005  # relative loss: see the module docstring
NOISE_SIGMAS = 2.0  # a regret within 2σ of two runs' seed noise is noise (noise_margin)
OFFSET_MATCH = 1e-6  # octaves: an lr is at an offset when log2(lr / α) is this close
# octaves: 2^8 = 256× the predicted LR either way is far outside any bowl a proxy study
# pins; beyond it an offset is a typo, and inf or nan would train at lr = inf or nan and
# leave a record no later command can read
MAX_OFFSET = 8.0


def check_offsets(offsets: Sequence[float]) -> tuple[float, ...]:
    """The offsets, sorted and deduplicated, or a :class:`ValueError` saying what is wrong:
    each finite and within ±:data:`MAX_OFFSET` octaves, and 0 (the prediction) among them.
    A lone 0 trains the prediction only (a benchmark's run at the predicted point); the
    command line also asks for a neighbour, since its verdict compares them."""
    values = tuple(float(o) for o in offsets)
    bad = [o for o in values if not math.isfinite(o) or abs(o) > MAX_OFFSET]
    if bad:
        raise ValueError(f"offsets are octaves of LR around the prediction, each a finite "
                         f"number within ±{MAX_OFFSET:g} (2^{MAX_OFFSET:g} = "
                         f"{2 ** MAX_OFFSET:g}× the predicted LR); got {bad[0]:g} (example: "
                         f"-1,-0.5,0,0.5,1)")
    unique = tuple(sorted(set(values)))
    if 0.0 not in unique:
        raise ValueError(f"offsets need 0 (the predicted point), got "
                         f"{','.join(f'{o:g}' for o in values) or 'none'}")
    return unique


class ConfirmationVerdict(str, Enum):
    CONFIRMED = "CONFIRMED"
    OPTIMUM_HIGHER = "OPTIMUM HIGHER"
    OPTIMUM_LOWER = "OPTIMUM LOWER"
    INCONCLUSIVE = "INCONCLUSIVE"


class ConfirmationRun(FrozenConfig):
    """One confirmation run: its LR offset (octaves from the prediction) and its result."""

    offset: float
    lr: float
    status: TrialStatus
    loss: float | None = None
    number: int | None = None
    reason: str | None = None
    bits_per_byte: float | None = Field(
        None, description="loss in bits per byte of text; None when the corpus's bytes per "
                          "token are unknown")


class Confirmation(FrozenConfig):
    """The confirmation of a prediction at ``target_width``; JSON via ``model_dump_json()``."""

    study: str
    target_width: int
    predicted_lr: float
    runs: tuple[ConfirmationRun, ...]
    verdict: ConfirmationVerdict
    regret: float | None = None
    best_offset: float | None = None
    tolerance: float = TOLERANCE
    noise: float | None = Field(None, description="the seed noise per run (relative) the "
                                                  "verdict allowed for, if measured")
    notes: tuple[str, ...] = ()


class Judgement(NamedTuple):
    verdict: ConfirmationVerdict
    regret: float | None
    best_offset: float | None
    notes: tuple[str, ...]


def noise_margin(noise: float | None) -> float:
    """The regret seed noise alone makes between two runs, at 2σ: a difference of two runs
    holds two runs' noise (σ√2), and 2σ of it is what paired runs beat each other by one
    time in forty-odd. 0 without a measured noise."""
    return 0.0 if noise is None else NOISE_SIGMAS * math.sqrt(2.0) * noise


def judge(runs: Sequence[ConfirmationRun], tolerance: float = TOLERANCE,
          noise: float | None = None) -> Judgement:
    """The verdict, regret, best offset and notes of a list of runs (module docstring).
    ``noise``: the study's measured seed noise per run (relative); a regret inside its
    :func:`noise_margin` is not evidence against the prediction."""
    done = [r for r in runs if r.status is TrialStatus.COMPLETE and r.loss is not None
            and math.isfinite(r.loss)]
    notes = [f"offset {r.offset:+g} {r.status.value}" + (f": {r.reason}" if r.reason else "")
             for r in runs if r not in done]
    at_prediction = next((r for r in done if abs(r.offset) < OFFSET_MATCH), None)
    if at_prediction is None:
        stated = next((r.status.value for r in runs if abs(r.offset) < OFFSET_MATCH),
                      "not run")
        notes.append(f"the predicted point did not complete ({stated}): no regret to judge")
        return Judgement(ConfirmationVerdict.INCONCLUSIVE, None, None, tuple(notes))
    if len(done) < 2:
        notes.append("only the predicted point completed: nothing to compare it with")
        return Judgement(ConfirmationVerdict.INCONCLUSIVE, None, None, tuple(notes))
    best = min(done, key=lambda r: (r.loss, abs(r.offset)))
    regret = max(0.0, (at_prediction.loss - best.loss) / best.loss)
    if regret <= tolerance:
        return Judgement(ConfirmationVerdict.CONFIRMED, regret, best.offset, tuple(notes))
    margin = noise_margin(noise)
    if regret <= margin:
        notes.append(f"the regret {100 * regret:.2f}% is above the {100 * tolerance:.2g}% "
                     f"tolerance but within the {100 * margin:.2f}% that seed noise alone "
                     f"makes between two runs (2σ·√2, σ = {100 * noise:.2f}% measured on the "
                     f"proxies): these runs cannot tell the prediction from the best one")
        return Judgement(ConfirmationVerdict.CONFIRMED, regret, best.offset, tuple(notes))
    verdict = (ConfirmationVerdict.OPTIMUM_HIGHER if best.offset > 0
               else ConfirmationVerdict.OPTIMUM_LOWER)
    offsets = [r.offset for r in runs]
    if best.offset in (max(offsets), min(offsets)):
        notes.append(f"the best run is at the edge of the offsets ({best.offset:+g} octave): "
                     f"the optimum may lie further out, so the regret is a lower bound; "
                     f"extend --offsets to bracket it")
    return Judgement(verdict, regret, best.offset, tuple(notes))


def summarize(study: str, width: int, predicted: HParams, runs: list[ConfirmationRun],
              tolerance: float, extra_notes: Sequence[str] = (),
              noise: float | None = None, corpus: CorpusRecord | None = None
              ) -> Confirmation:
    """The :class:`Confirmation` of ``predicted`` at ``width`` from its runs; ``corpus``
    (the study's record of it) gives each run's loss in bits per byte."""
    if corpus is not None:
        runs = [r.model_copy(update={"bits_per_byte": corpus.bits_per_byte(r.loss)})
                for r in runs]
    judgement = judge(runs, tolerance, noise)
    return Confirmation(study=study, target_width=width, predicted_lr=predicted.lr,
                        runs=tuple(runs), verdict=judgement.verdict, regret=judgement.regret,
                        best_offset=judgement.best_offset, tolerance=tolerance,
                        noise=noise, notes=(*extra_notes, *judgement.notes))

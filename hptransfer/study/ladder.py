"""The ladder search: a study's widths tuned cheapest first, each steered by the ones before.

Under µP the LR optimum does not move with width (docs/spec.md §1), so once the cheapest
width has found its bowl, a wider width need not search the whole LR range again: it starts
on a half-octave grid around the optimum the narrower widths predict and only walks away
from it if its own trials say so. Trials go where the bowl is, and a width stops when its
optimum is pinned, not after a fixed count.

One width is searched in *rounds*: a round is a set of points chosen from the width's
finished trials, run in parallel, and the next round is chosen only when every trial of the
round has finished. A round is a function of finished trials alone, so a study run by one
process or by many holds the same trials with the same losses. The steps, in order:

1. **bracket**: LR points until the best one has a worse (or diverged) LR on each side:
   the range's middle and ±2 octaves on the first width; the prior's half-octave grid
   (±1 octave) on later widths; then further out on the side of the best.
2. **bowl**: half-octave points within ±``BOWL_OCTAVES`` of the fitted optimum.
3. **seed** (first width): the bowl's middle three LRs again with the next seed: the seed
   noise (:func:`hptransfer.study.optimum.seed_noise`) that every width's interval uses.
4. **widen** (any width): while the optimum's 95% interval is wider than ``precision``
   octaves, half-octave points further out (the bowl's flanks pin its curvature).
5. **flat** (first width, when searched): weight decay at the LR optimum (0 and the decades
   of its range, then the half decades beside the best of them: a decade is too coarse for
   λ, whose loss rises steeply above its optimum), then the batch sizes with the LR moved by
   √(b/b₀) (docs/spec.md §4).
6. **recheck** (first width, when a weight decay or batch other than the base wins): the
   bowl's middle at the chosen ones, then further out on the side of the best until it has
   a worse LR on each side, so that the LR optimum is read where it will be used.
7. **multipliers** (first width, when the space searches them): each per-module multiplier
   (HParams' ``MULTIPLIERS``: the embedding's LR, the readout's output multiplier) alone at
   the LR optimum of the chosen weight decay and batch, two octaves each side of its base,
   then one octave beside the best; a multiplier leaves its base only when it beats it by
   more than twice the seed noise and 0.5%. When one does, step 6 runs again at the choice
   (the width's cap grows by the step's 12 trials at most, so it is never cut short).

Later widths hold the first width's weight decay, batch and multipliers (µP transfers them;
coupled λ is moved to the width by the ladder's own rule) and run steps 1, 2 and 4.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any

import numpy as np
from pydantic import Field

from hptransfer.hparams import MULTIPLIERS, HParams
from hptransfer.mup.rules import coupled_decay_scale, weight_decay_depends_on_width
from hptransfer.spec import FrozenConfig
from hptransfer.study.config import StudyConfig
from hptransfer.study.optimum import BAND, WINDOW_OCTAVES, fit_width, seed_noise
from hptransfer.study.schema import TrialRecord, TrialStatus

__all__ = ["BOWL_OCTAVES", "PRECISION", "Ladder", "LadderPoint", "Prior", "Round", "Step",
           "WidthSearch", "chosen_multipliers", "multipliers_of", "prior_from"]

SPACING = 0.5  # octaves between LR points of a bowl: about the noise-limited resolution
COARSE = 2.0  # octaves between the first width's bracketing points: the paper's grid
# Bowl: ±1 octave of the optimum. At the proxies' curvature (1–4% of the loss per octave²)
# the loss rises 1–4% there, well above the per-run seed noise (~0.5–1%), so the parabola
# is determined; farther out the bowl turns asymmetric.
BOWL_OCTAVES = 1.0
WIDEN_OCTAVES = 2.0  # the widen step goes at most this far from the optimum (the fit window)
PRECISION = 0.75  # octaves: the width of a 95% LR interval at which a width stops widening
SEED_POINTS = 3  # LRs run again with another seed on the first width
FLAT_DECADES = 3  # weight decays tried besides 0 (decades inside the range)
MULTIPLIER_OCTAVES = 2.0  # the multipliers step's first points: base × 2^±2, then ± 1 octave
# A multiplier moves only for a gain above twice the seed noise and above this floor: two
# configurations on one seed are two trajectories, and at width 256 runs a quarter octave
# apart land ±1% from a smooth bowl (docs/transfer.md), so a smaller gain of one trial is
# not evidence; a moved multiplier is carried to every width.
MULTIPLIER_MIN_GAIN = 0.005
# the step's most trials (2 per multiplier, 2 beside each moved one, a 4-point recheck):
# the first width's cap grows by this when the step runs, so the cap never cuts it short
MULTIPLIER_TRIALS = 4 * 2 + 4
_FIT_BOOTSTRAP = 400  # resamples behind the ladder's own stopping decisions


class Step(str, Enum):
    """Which step of the ladder chose a trial (recorded as the trial's ``ladder`` attr)."""

    BRACKET = "bracket"
    BOWL = "bowl"
    SEED = "seed"
    WIDEN = "widen"
    FLAT = "flat"
    RECHECK = "recheck"
    MULTIPLIERS = "multipliers"


class LadderPoint(FrozenConfig):
    """One trial the ladder asks for."""

    lr_code: float = Field(description="log2 of the base LR")
    weight_decay: float
    batch_size: int
    seed: int
    step: Step
    multipliers: tuple[float, ...] = Field(
        (1.0,) * len(MULTIPLIERS), description="the values of HParams' MULTIPLIERS, in order")

    @property
    def lr(self) -> float:
        return 2.0**self.lr_code

    def params(self, config: StudyConfig) -> dict[str, Any]:
        """The Optuna params of this point in the study's search space."""
        space = config.space
        params: dict[str, Any] = {"lr": self.lr}
        if space.weight_decay is not None:
            params["weight_decay_on"] = self.weight_decay > 0
            if self.weight_decay > 0:
                params["weight_decay"] = self.weight_decay
        if space.batch_sizes is not None:
            params["batch_size"] = self.batch_size
        if space.multipliers is not None:
            params.update(zip(MULTIPLIERS, self.multipliers, strict=True))
        return params


class Round(FrozenConfig):
    """The next trials of a width, or why it is done (``points`` empty)."""

    points: tuple[LadderPoint, ...] = ()
    done: str | None = Field(None, description="why the width needs no more trials")
    note: str = ""


class Prior(FrozenConfig):
    """Where the narrower widths put this width's LR optimum, and the flat hparams to hold."""

    lr_code: float
    interval: tuple[float, float]
    weight_decay: float
    batch_size: int
    multipliers: tuple[float, ...] = (1.0,) * len(MULTIPLIERS)
    noise: float | None = Field(None, description="relative seed noise measured so far")
    from_widths: tuple[int, ...]


class WidthSearch(FrozenConfig):
    """What the ladder spent on one width and the LR interval it bought."""

    width: int
    trials: int
    flops: float
    lr: float = Field(description="the width's LR optimum")
    interval: tuple[float, float] = Field(description="its 95% interval, seed noise included")
    noise: float | None = Field(description="the relative seed noise the interval used")
    stopped: str = Field(description="why the width needs no more trials")


def _half(code: float) -> float:
    return round(code / SPACING) * SPACING


def multipliers_of(hparams: HParams) -> tuple[float, ...]:
    """The values of HParams' MULTIPLIERS, in order (rounded: they are compared)."""
    return tuple(round(getattr(hparams, name), 9) for name in MULTIPLIERS)


def _same_flat(r: TrialRecord, weight_decay: float, batch: int,
               multipliers: tuple[float, ...]) -> bool:
    return (r.hparams is not None and math.isclose(r.hparams.weight_decay, weight_decay,
                                                   rel_tol=1e-9, abs_tol=0.0)
            and r.hparams.batch_size == batch and multipliers_of(r.hparams) == multipliers)


class Ladder:
    """The planner of one width of a ladder study: :meth:`plan` reads the width's trials
    and returns the next :class:`Round`."""

    def __init__(self, config: StudyConfig, width: int, *, prior: Prior | None,
                 max_trials: int, precision: float = PRECISION) -> None:
        if config.space.lr is None:
            raise ValueError("the ladder searches the LR: the study's space must have an "
                             "lr range")
        self.config, self.width, self.prior = config, width, prior
        self.first = prior is None
        if self.first and config.space.multipliers is not None:
            max_trials += MULTIPLIER_TRIALS
        self.max_trials, self.precision = max_trials, precision
        base = config.space.base
        self.weight_decay = base.weight_decay if prior is None else prior.weight_decay
        self.batch = base.batch_size if prior is None else prior.batch_size
        self.base_multipliers = multipliers_of(base)
        self.multipliers = self.base_multipliers if prior is None else prior.multipliers
        self.low = math.log2(config.space.lr[0])
        self.high = math.log2(config.space.lr[1])

    # ---- points --------------------------------------------------------------------------

    def _point(self, code: float, step: Step, *, seed: int | None = None,
               weight_decay: float | None = None, batch: int | None = None,
               multipliers: tuple[float, ...] | None = None) -> LadderPoint:
        return LadderPoint(lr_code=code, step=step,
                           seed=self.config.seed if seed is None else seed,
                           weight_decay=self.weight_decay if weight_decay is None
                           else weight_decay,
                           batch_size=self.batch if batch is None else batch,
                           multipliers=self.multipliers if multipliers is None
                           else multipliers)

    def _inside(self, code: float, ceiling: float | None) -> bool:
        top = self.high if ceiling is None else min(self.high, ceiling - SPACING / 2)
        return self.low - 1e-9 <= code <= top + 1e-9

    # ---- the plan ------------------------------------------------------------------------

    def plan(self, rows: Sequence[TrialRecord]) -> Round:
        """The next round for this width, from its trials (any status)."""
        live = [r for r in rows if r.status is not TrialStatus.LOST]
        if any(r.status in (TrialStatus.RUNNING, TrialStatus.WAITING) for r in live):
            return Round(note="waiting for the round in flight")
        finished = [r for r in live if r.finished]
        if len(finished) >= self.max_trials:
            return Round(done=f"reached its cap of {self.max_trials} trials")
        tried = {self._key(r) for r in live if r.hparams is not None}
        for step in (self._bracket, self._bowl, self._seed, self._widen, self._flat,
                     self._recheck, self._multipliers):
            points = [p for p in step(finished) if self._key_of(p) not in tried]
            points = list(dict.fromkeys(points))[:self.max_trials - len(finished)]
            if points:
                return Round(points=tuple(points), note=points[0].step.value)
        return Round(done=self._done_note(finished))

    @staticmethod
    def _key(r: TrialRecord) -> tuple:
        h = r.hparams
        return (round(math.log2(h.lr), 6), round(h.weight_decay, 12), h.batch_size,
                r.seed, multipliers_of(h))

    def _key_of(self, p: LadderPoint) -> tuple:
        return (round(p.lr_code, 6), round(p.weight_decay, 12), p.batch_size, p.seed,
                tuple(round(v, 9) for v in p.multipliers))

    def _bowl_rows(self, finished: Sequence[TrialRecord], *, seed: int | None = None,
                   weight_decay: float | None = None, batch: int | None = None,
                   multipliers: tuple[float, ...] | None = None) -> list[TrialRecord]:
        """Trials on this width's LR bowl: at the held weight decay, batch and multipliers
        (or the given ones) and the study's seed (or the given one)."""
        seed = self.config.seed if seed is None else seed
        weight_decay = self.weight_decay if weight_decay is None else weight_decay
        batch = self.batch if batch is None else batch
        multipliers = self.multipliers if multipliers is None else multipliers
        return [r for r in finished if _same_flat(r, weight_decay, batch, multipliers)
                and (r.seed if r.seed is not None else self.config.seed) == seed]

    def _fit(self, rows: Sequence[TrialRecord], noise: float | None = None):
        """The predictor's own estimate of this width's LR optimum on ``rows``."""
        config = self.config.model_copy(update={"space": self.config.space.model_copy(
            update={"weight_decay": None, "batch_sizes": None})})
        return fit_width(self.width, list(rows), config, band=BAND, window=WINDOW_OCTAVES,
                         bootstrap=_FIT_BOOTSTRAP, rng=np.random.default_rng(self.width),
                         noise=noise)

    def _ceiling(self, rows: Sequence[TrialRecord]) -> float | None:
        diverged = [math.log2(r.hparams.lr) for r in rows
                    if r.status is TrialStatus.DIVERGED and r.hparams is not None]
        return min(diverged, default=None)

    def _bracket(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        rows = self._bowl_rows(finished)
        done = [r for r in rows if r.completed_loss is not None]
        ceiling = self._ceiling(rows)
        if not rows:
            if self.prior is None:
                middle = round((self.low + self.high) / 2)
                codes = [middle - COARSE, middle, middle + COARSE]
            else:
                centre = _half(self.prior.lr_code)
                codes = [centre + k * SPACING for k in range(-2, 3)]
            return [self._point(c, Step.BRACKET) for c in codes if self._inside(c, None)]
        # two points a round on the side of the best: the grid's own spacing further out
        step = COARSE if self.prior is None else SPACING
        if not done:  # everything diverged (or errored): go down
            lowest = min(math.log2(r.hparams.lr) for r in rows)
            return [self._point(c, Step.BRACKET) for c in (lowest - step, lowest - 2 * step)
                    if self._inside(c, ceiling)]
        codes = np.array([math.log2(r.hparams.lr) for r in done])
        best = float(codes[int(np.argmin([r.completed_loss for r in done]))])
        out = []
        if best <= codes.min() and best - step >= self.low - 1e-9:
            out = [best - step, best - 2 * step]
        elif best >= codes.max():
            if ceiling is None:
                out = [best + step, best + 2 * step]
            elif ceiling - best > SPACING + 1e-9:  # close in on the edge of stability
                out = [_half((best + ceiling) / 2)]
        return [self._point(c, Step.BRACKET) for c in out if self._inside(c, ceiling)]

    def _centre(self, finished: Sequence[TrialRecord]) -> float:
        fit = self._fit(self._bowl_rows(finished))
        return math.log2(fit.evidence.optima["lr"].value)

    def _around(self, centre: float, half_width: float, ceiling: float | None, step: Step,
                **kwargs) -> list[LadderPoint]:
        middle = _half(centre)
        k = int(round(half_width / SPACING))
        # nearest first, so a capped round keeps the points that matter most
        offsets = sorted(range(-k, k + 1), key=lambda i: (abs(i), i))
        return [self._point(middle + i * SPACING, step, **kwargs) for i in offsets
                if self._inside(middle + i * SPACING, ceiling)]

    def _best_code(self, finished: Sequence[TrialRecord]) -> float:
        """log2 α of the best completed trial on this width's LR bowl (study seed)."""
        done = [r for r in self._bowl_rows(finished) if r.completed_loss is not None]
        return math.log2(min(done, key=lambda r: r.completed_loss).hparams.lr)

    def _bowl(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        rows = self._bowl_rows(finished)
        if not any(r.completed_loss is not None for r in rows):
            return []
        return self._around(self._centre(finished), BOWL_OCTAVES, self._ceiling(rows),
                            Step.BOWL)

    def _seed(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        if not self.first or not self._bowl_rows(finished) or any(
                r.seed is not None and r.seed != self.config.seed for r in finished):
            return []  # once: the replicates measure the noise, they are not the search
        centre = self._centre(finished)
        points = self._around(centre, SPACING * (SEED_POINTS // 2),
                              self._ceiling(self._bowl_rows(finished)), Step.SEED,
                              seed=self.config.seed + 1)
        return points[:SEED_POINTS]

    def noise(self, finished: Sequence[TrialRecord]) -> float | None:
        """The seed noise: measured on this width if it has replicates, else the prior's."""
        measured = seed_noise(list(finished), self.config)
        if measured is not None:
            return measured.shape
        return self.prior.noise if self.prior is not None else None

    def interval(self, finished: Sequence[TrialRecord]) -> tuple[float, float]:
        """This width's 95% LR interval (log2), with the seed noise, on its bowl trials."""
        rows = [r for r in finished
                if _same_flat(r, self.weight_decay, self.batch, self.multipliers)]
        fit = self._fit(rows, self.noise(finished))
        low, high = fit.evidence.optima["lr"].interval
        return math.log2(low), math.log2(high)

    def _widen(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        rows = self._bowl_rows(finished)
        if not any(r.completed_loss is not None for r in rows):
            return []
        low, high = self.interval(finished)
        if high - low <= self.precision:
            return []
        centre = self._centre(finished)
        ceiling = self._ceiling(rows)
        tried = {round(math.log2(r.hparams.lr), 6) for r in rows}
        # the next ring out that is not yet sampled, both sides at once
        for half_width in np.arange(BOWL_OCTAVES + SPACING, WIDEN_OCTAVES + 1e-9, SPACING):
            ring = [p for p in self._around(centre, float(half_width), ceiling, Step.WIDEN)
                    if round(p.lr_code, 6) not in tried]
            if ring:
                return ring
        return []

    def _flat_choice(self, finished: Sequence[TrialRecord]) -> tuple[float, int]:
        """The weight decay and batch the predictor's estimator picks on these trials."""
        # the flat step runs at the held multipliers: the multipliers step's trials (other
        # multipliers at one LR) would only blur the weight decay and batch bands
        primary = [r for r in finished
                   if (r.seed if r.seed is not None else self.config.seed) == self.config.seed
                   and r.hparams is not None and multipliers_of(r.hparams) == self.multipliers]
        fit = fit_width(self.width, primary, self.config, band=BAND, window=WINDOW_OCTAVES,
                        bootstrap=_FIT_BOOTSTRAP, rng=np.random.default_rng(self.width))
        optima = fit.evidence.optima
        weight_decay = (optima["weight_decay"].value if "weight_decay" in optima
                        else self.weight_decay)
        batch = int(optima["batch_size"].value) if "batch_size" in optima else self.batch
        return weight_decay, batch

    def _flat(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        space = self.config.space
        if not self.first or not any(r.completed_loss is not None
                                     for r in self._bowl_rows(finished)):
            return []
        # at the bowl's best trial: each weight decay is then paired with a trial at the
        # same LR, and the near-optimal band compares them, not two LRs
        centre = self._best_code(finished)
        if space.weight_decay is not None:
            points = self._weight_decays(finished, centre)
            if points:
                return points
        if space.batch_sizes is not None:
            weight_decay, _ = self._flat_choice(finished)
            return [self._point(centre + 0.5 * math.log2(b / self.batch), Step.FLAT,
                                weight_decay=weight_decay, batch=b)
                    for b in space.batch_sizes
                    if self._inside(centre + 0.5 * math.log2(b / self.batch), None)]
        return []

    def _weight_decays(self, finished: Sequence[TrialRecord], centre: float
                       ) -> list[LadderPoint]:
        """The weight decays still to run at LR code ``centre``: 0 and the decades of the
        range, then the half decades on each side of the best of them (none when 0 wins).

        Why the second round: measured on the built-in proxies (independent λ, 300 steps,
        widths 32–256), λ's optimum sat between two decades (2.5e-3 … 5e-3 at every width)
        and the loss rose steeply above it (λ = 2e-2 cost 0.1 nats), so a choice between
        1e-3 and 1e-2 made by one trial each picked the decade on the cliff's edge; that
        cost 0.04 nats at width 256 (docs/transfer.md)."""
        space = self.config.space
        tried = {self._key(r) for r in finished if r.hparams is not None}
        decades = [self._point(centre, Step.FLAT, weight_decay=v)
                   for v in (0.0, *_decades(space.weight_decay, FLAT_DECADES))]
        if any(self._key_of(p) not in tried for p in decades):
            return decades
        at_centre = [r for r in finished if r.completed_loss is not None
                     and round(math.log2(r.hparams.lr), 6) == round(centre, 6)
                     and r.hparams.batch_size == self.batch
                     and (r.seed if r.seed is not None else self.config.seed)
                     == self.config.seed]
        best = min(at_centre, key=lambda r: r.completed_loss).hparams.weight_decay
        if best == 0:
            return []
        low, high = space.weight_decay
        halves = [self._point(centre, Step.FLAT, weight_decay=best * 10.0**k)
                  for k in (-0.5, 0.5) if low <= best * 10.0**k <= high]
        return [p for p in halves if self._key_of(p) not in tried]

    def _recheck(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        space = self.config.space
        if not self.first or (space.weight_decay is None and space.batch_sizes is None) or \
                not any(r.completed_loss is not None for r in self._bowl_rows(finished)):
            return []
        weight_decay, batch = self._flat_choice(finished)
        multipliers = self._multiplier_choice(finished)
        if math.isclose(weight_decay, self.weight_decay) and batch == self.batch and \
                multipliers == self.multipliers:
            return []
        flat = dict(weight_decay=weight_decay, batch=batch, multipliers=multipliers)
        rows = self._bowl_rows(finished, **flat)
        done = [r for r in rows if r.completed_loss is not None]
        centre = self._best_code(finished) + 0.5 * math.log2(batch / self.batch)
        codes = [centre + k * SPACING for k in (-1, 0, 1)]
        if done:
            # the √k rule is a first guess: bracket the LR where the choice will be used, so
            # that the predictor never reads this width's optimum off the edge of its points
            tried = [math.log2(r.hparams.lr) for r in done]
            best = tried[int(np.argmin([r.completed_loss for r in done]))]
            if best >= max(tried):
                codes.append(best + SPACING)
            elif best <= min(tried):
                codes.append(best - SPACING)
        ceiling = self._ceiling(rows)
        return [self._point(c, Step.RECHECK, **flat) for c in codes
                if self._inside(c, ceiling)]

    # ---- the per-module multipliers -------------------------------------------------------

    def _multiplier_centre(self, finished: Sequence[TrialRecord]
                           ) -> tuple[float, dict[str, Any]] | None:
        """The LR code and flat hparams the multipliers are tried at: the best trial at the
        chosen weight decay and batch (and the held multipliers); None before there is one."""
        if not self.first or self.config.space.multipliers is None or not any(
                r.completed_loss is not None for r in self._bowl_rows(finished)):
            return None
        weight_decay, batch = self._flat_choice(finished)
        flat = dict(weight_decay=weight_decay, batch=batch)
        at_flat = [r for r in self._bowl_rows(finished, **flat) if r.completed_loss is not None]
        if not at_flat:
            return None  # the recheck runs first
        best = min(at_flat, key=lambda r: r.completed_loss)
        return math.log2(best.hparams.lr), flat

    def _varied(self, index: int, value: float) -> tuple[float, ...]:
        return tuple(round(value, 9) if i == index else v
                     for i, v in enumerate(self.multipliers))

    def _multiplier_losses(self, finished: Sequence[TrialRecord], index: int, centre: float,
                           flat: dict[str, Any]) -> dict[float, float]:
        """Loss by value of multiplier ``index``, the others held, at ``centre``."""
        losses = {}
        for r in finished:
            if r.completed_loss is None or r.hparams is None or \
                    (r.seed if r.seed is not None else self.config.seed) != self.config.seed \
                    or round(math.log2(r.hparams.lr), 6) != round(centre, 6) \
                    or not math.isclose(r.hparams.weight_decay, flat["weight_decay"],
                                        rel_tol=1e-9, abs_tol=0.0) \
                    or r.hparams.batch_size != flat["batch"]:
                continue
            values = multipliers_of(r.hparams)
            if all(v == held for i, (v, held) in enumerate(zip(values, self.multipliers,
                                                                strict=True)) if i != index):
                losses[values[index]] = r.completed_loss
        return losses

    def _best_multiplier(self, finished: Sequence[TrialRecord], index: int, centre: float,
                         flat: dict[str, Any]) -> float:
        """The value multiplier ``index`` takes: the best tried, but the held value unless
        another beats it by more than twice the seed noise (one trial each: a smaller gap
        is noise, and a multiplier moved for nothing is carried to every width)."""
        held = self.multipliers[index]
        losses = self._multiplier_losses(finished, index, centre, flat)
        if held not in losses:
            return held
        best = min(losses, key=losses.get)
        gain = max(2 * (self.noise(finished) or 0.0), MULTIPLIER_MIN_GAIN)
        return best if losses[best] < losses[held] * (1 - gain) else held

    def _multiplier_choice(self, finished: Sequence[TrialRecord]) -> tuple[float, ...]:
        """The multipliers the first width chooses (the held ones until step 7 has run)."""
        where = self._multiplier_centre(finished)
        if where is None:
            return self.multipliers
        centre, flat = where
        return tuple(self._best_multiplier(finished, i, centre, flat)
                     for i in range(len(MULTIPLIERS)))

    def _multipliers(self, finished: Sequence[TrialRecord]) -> list[LadderPoint]:
        """Step 7: each multiplier alone at 2^±2 of its held value, then 2^±1 beside the
        best when that moved (a synthetic-bowl test and docs/tuning.md say why)."""
        where = self._multiplier_centre(finished)
        if where is None:
            return []
        centre, flat = where
        low, high = self.config.space.multipliers
        tried = {self._key(r) for r in finished if r.hparams is not None}
        ring = []
        for index, held in enumerate(self.multipliers):
            ring += [self._point(centre, Step.MULTIPLIERS, **flat,
                                 multipliers=self._varied(index, held * 2.0**k))
                     for k in (-MULTIPLIER_OCTAVES, MULTIPLIER_OCTAVES)
                     if low <= held * 2.0**k <= high]
        fresh = [p for p in ring if self._key_of(p) not in tried]
        if fresh:
            return fresh
        beside = []
        for index, held in enumerate(self.multipliers):
            best = self._best_multiplier(finished, index, centre, flat)
            if best != held:
                beside += [self._point(centre, Step.MULTIPLIERS, **flat,
                                       multipliers=self._varied(index, best * 2.0**k))
                           for k in (-1.0, 1.0) if low <= best * 2.0**k <= high]
        return [p for p in beside if self._key_of(p) not in tried]

    def _done_note(self, finished: Sequence[TrialRecord]) -> str:
        if not self._bowl_rows(finished):
            return "no trial of its LR bowl completed"
        low, high = self.interval(finished)
        if high - low > self.precision + 1e-9:
            # widen ran out of rings (±2 octaves): say the interval was not bought, and why
            noise = self.noise(finished)
            why = "" if noise is None else f"; seed noise {100 * noise:.2f}% of the loss"
            return (f"LR optimum left at a 95% interval of {high - low:.2f} octaves, wider "
                    f"than the {self.precision:.2f} asked, after {len(finished)} trials: "
                    f"its bowl is sampled out to ±{WIDEN_OCTAVES:g} octaves{why}")
        return (f"LR optimum pinned to a 95% interval of {high - low:.2f} octaves with "
                f"{len(finished)} trials")

    def summary(self, rows: Sequence[TrialRecord], stopped: str | None) -> WidthSearch:
        finished = [r for r in rows if r.finished]
        low, high = self.interval(finished) if self._bowl_rows(finished) else (math.nan,) * 2
        centre = self._centre(finished) if self._bowl_rows(finished) else math.nan
        return WidthSearch(width=self.width, trials=len(finished),
                           flops=sum(r.flops for r in rows), lr=2.0**centre,
                           interval=(2.0**low, 2.0**high), noise=self.noise(finished),
                           stopped=stopped or self._done_note(finished))

    # ---- what the next width holds ---------------------------------------------------------

    def flat_for_next(self, finished: Sequence[TrialRecord]) -> tuple[float, int]:
        """The weight decay and batch the next widths hold (the first width's choice)."""
        if not self.first:
            return self.weight_decay, self.batch
        return self._flat_choice(finished)

    def multipliers_for_next(self, finished: Sequence[TrialRecord]) -> tuple[float, ...]:
        """The multipliers the next widths hold: the first width's choice, once its LR bowl
        has been rechecked there (three LRs or more completed); the held ones until then."""
        chosen = self._multiplier_choice(finished)
        if chosen == self.multipliers:
            return chosen
        weight_decay, batch = self._flat_choice(finished)
        rechecked = {r.hparams.lr for r in self._bowl_rows(
            finished, weight_decay=weight_decay, batch=batch, multipliers=chosen)
            if r.completed_loss is not None}
        return chosen if len(rechecked) >= 3 else self.multipliers


def _decades(bounds: tuple[float, float], count: int) -> list[float]:
    """Up to ``count`` powers of ten strictly inside ``bounds``, evenly spread."""
    low, high = (math.log10(b) for b in bounds)
    inside = [10.0**k for k in range(math.floor(low) + 1, math.ceil(high))]
    if len(inside) <= count:
        return inside
    picks = np.linspace(0, len(inside) - 1, count).round().astype(int)
    return [inside[i] for i in picks]


def prior_from(config: StudyConfig, width: int, earlier: Sequence[tuple[int, Ladder,
               Sequence[TrialRecord]]]) -> Prior:
    """The prior of ``width`` from the widths searched before it (narrowest first): the
    nearest width's optimum, moved by the drift the earlier widths show (two or more); the
    first width's weight decay and batch (coupled λ under µP moved to this width)."""
    fits = []
    for earlier_width, ladder, rows in earlier:
        rows = [r for r in rows if r.finished]
        low, high = ladder.interval(rows)
        centre = ladder._centre(rows)
        fits.append((earlier_width, centre, (low, high), ladder.noise(rows)))
    near_width, centre, interval, noise = fits[-1]
    if len(fits) >= 2:
        (w0, c0, _, _), (w1, c1, _, _) = fits[-2], fits[-1]
        drift = (c1 - c0) / math.log2(w1 / w0)
        shift = drift * math.log2(width / near_width)
        centre, interval = centre + shift, (interval[0] + shift, interval[1] + shift)
    first_width, first, first_rows = earlier[0]
    weight_decay, batch = first.flat_for_next([r for r in first_rows if r.finished])
    multipliers = first.multipliers_for_next([r for r in first_rows if r.finished])
    spec = config.spec
    if weight_decay > 0 and weight_decay_depends_on_width(spec, config.space.base
                                                          .weight_decay_rule):
        weight_decay *= (coupled_decay_scale(config.spec_at(width))
                         / coupled_decay_scale(config.spec_at(first_width)))
    noises = [n for _, _, _, n in fits if n is not None]
    return Prior(lr_code=centre, interval=interval, weight_decay=weight_decay,
                 batch_size=batch, multipliers=multipliers, noise=noises[0] if noises else None,
                 from_widths=tuple(w for w, _, _, _ in fits))


def chosen_multipliers(config: StudyConfig, width: int, rows: Sequence[TrialRecord]
                       ) -> tuple[float, ...]:
    """The multipliers the ladder chose on its first width ``width`` from its trials
    ``rows`` (the held base values when the space does not search them)."""
    ladder = Ladder(config, width, prior=None, max_trials=len(rows) + 1)
    return ladder.multipliers_for_next([r for r in rows if r.finished])


def base_hparams(config: StudyConfig, point: LadderPoint) -> HParams:
    """The HParams a ladder point trains (the study's base with the point's values)."""
    return HParams(**{**config.space.base.model_dump(), "lr": point.lr,
                      "weight_decay": point.weight_decay, "batch_size": point.batch_size,
                      **dict(zip(MULTIPLIERS, point.multipliers, strict=True))})

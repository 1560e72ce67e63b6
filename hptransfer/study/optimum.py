"""What one width's trials say: its optimum (step 1 of the transfer, and the ladder search's guide).

The LR optimum of one width is the vertex of a quadratic in log2(lr) fitted to the completed
trials within ``window`` octaves of the best one (the loss is roughly a parabola in log2 lr
near its minimum, docs/spec.md §5), with a bootstrap interval (trials resampled, quadratic
refitted). Diverged trials are not losses: the smallest diverged LR bounds the optimum from
above. Weight decay and batch size, whose loss surfaces are flat, come from the near-optimal
*band* (DeepSeek, Step Law): the loss-weighted median over the trials within ``band`` of the
best loss. Each width's result is a :class:`WidthEvidence` record; its bootstrap samples
(log2 units) go on to the fit against width, :mod:`hptransfer.transfer.fit`.

>>> import numpy as np
>>> x = np.log2([2.0**-8, 2.0**-6, 2.0**-4]); y = 3.0 + 0.05 * (x + 6.5) ** 2
>>> round(float(parabola_vertex(x, y)), 3)
-6.5
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from hptransfer.spec import FrozenConfig
from hptransfer.study.config import StudyConfig
from hptransfer.study.schema import TrialRecord, TrialStatus

__all__ = ["Estimate", "SeedNoise", "WidthEvidence", "WidthFit", "fit_width", "fit_window",
           "parabola_vertex", "percentiles", "seed_noise", "zero_code"]

# ---- the choices, each with its reason ------------------------------------------------------

# LR fit window: the best trial's LR ± 2 octaves (and always its nearest sampled neighbour on
# each side). The warm-start grid is 2 octaves apart, so the window always holds the grid
# points bracketing the minimum; within ±2 octaves the bowl is close to a parabola, while
# farther out it turns asymmetric (a slow climb at low LR, a wall near divergence).
WINDOW_OCTAVES = 2.0
# Near-optimal band for weight decay and batch size: trials within 1% of the best loss. The
# 0.25% of docs/spec.md §5 (DeepSeek) is calibrated on large runs whose seed noise is ~0.1%;
# on short CPU proxies it keeps one or two trials, while 1% is about what half an octave of
# LR costs on their bowls, so the band holds the near-optimal plateau.
BAND = 0.01
MIN_BAND_TRIALS = 3  # the band is widened to the 3 best trials when it holds fewer
CONFIDENCE = 0.95
BOOTSTRAP = 1000  # resamples behind every interval


class Estimate(FrozenConfig):
    """One width's optimum of one hparam, with its bootstrap interval."""

    value: float
    interval: tuple[float, float]
    method: str = Field(description="quadratic, best-point or band-median")
    trials: int = Field(description="trials the estimate used")


class WidthEvidence(FrozenConfig):
    """What one width's trials say: each tuned hparam's optimum and the stable region."""

    width: int
    complete: int
    diverged: int
    ignored: int = Field(description="pruned, lost, error, running or waiting trials")
    best_loss: float
    loss_at_optimum: float = Field(description="the fitted loss at the LR optimum")
    curvature: float | None = Field(
        None, description="the bowl's curvature at the optimum: relative loss per octave² "
                          "of LR (None when no parabola was fitted)")
    diverged_lr: float | None = Field(description="smallest diverged LR: bounds the optimum")
    optima: dict[str, Estimate]
    flags: tuple[str, ...] = Field((), description="fallbacks and caps (each also a warning) "
                                                   "and notes on which trials were used")


def percentiles(samples: np.ndarray) -> tuple[float, float]:
    tail = 50.0 * (1.0 - CONFIDENCE)
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def _resample_counts(n: int, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(bootstrap, n) counts of each trial in each resample (cases bootstrap)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)


def _design(x: np.ndarray, groups: np.ndarray, centre: float) -> np.ndarray:
    """The bowl's design matrix: one level per seed (a seed shifts the whole bowl up or
    down), then the shared slope and curvature in log2 lr around ``centre``."""
    levels = (groups[:, None] == np.unique(groups)[None, :]).astype(float)
    return np.concatenate([levels, (x - centre)[:, None], ((x - centre) ** 2)[:, None]], axis=1)


def fit_window(x: np.ndarray, best: float, window: float,
               neighbours: np.ndarray | None = None) -> np.ndarray:
    """Which runs the LR parabola is fitted to (a mask over ``x``, log2 lr): those within
    ``window`` octaves of the best run's ``best``, and always the nearest LR on each side
    of it among ``neighbours`` (default: ``x``), so that a coarse design still brackets the
    minimum. The one place the window rule lives (benchmarks/target_optimum.py reuses it)."""
    neighbours = x if neighbours is None else neighbours
    keep = np.abs(x - best) <= window + 1e-9
    below, above = neighbours[neighbours < best], neighbours[neighbours > best]
    if below.size:
        keep |= x == below.max()
    if above.size:
        keep |= x == above.min()
    return keep


def parabola_vertex(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> float:
    """Vertex of the least-squares parabola through (x, y), one level per seed group; nan
    when it opens downward."""
    groups = np.zeros(x.size) if groups is None else groups
    centre = float(x.mean())
    coef = np.linalg.lstsq(_design(x, groups, centre), y, rcond=None)[0]
    b, c = coef[-2], coef[-1]
    return centre - b / (2 * c) if c > 0 else math.nan


def _bootstrap_vertices(x: np.ndarray, y: np.ndarray, groups: np.ndarray, counts: np.ndarray,
                        jitter: np.ndarray | None) -> np.ndarray:
    """The parabola vertex of every resample at once (weighted normal equations). A resample
    with fewer than three distinct LRs, or whose parabola opens downward, takes its best
    point instead: the vertex is then undefined, the best point is what the data says.
    ``jitter`` (B, n), when given, is added to the losses: the measured seed noise."""
    centre = x.mean()
    design = _design(x, groups, centre)  # (n, k)
    ys = y[None, :] if jitter is None else y[None, :] + jitter  # (1 or B, n)
    normal = np.einsum("bn,ni,nj->bij", counts, design, design)  # (B, k, k)
    moment = np.einsum("bn,ni,bn->bi", counts, design, np.broadcast_to(ys, counts.shape))
    levels = design.shape[1] - 2
    # a seed absent from a resample leaves its level's row empty: pin that level to 0
    for g in range(levels):
        empty = normal[:, g, g] == 0
        normal[empty, g, g] = 1.0
    distinct_x = np.unique(x)
    members = (x[:, None] == distinct_x[None, :]).astype(float)  # (n, u)
    distinct = ((counts @ members) > 0).sum(axis=1)
    ok = distinct >= 3
    if levels > 1:  # seeds can leave a resample's curvature undetermined even then
        ok &= np.linalg.matrix_rank(normal) == design.shape[1]
    normal[~ok] = np.eye(design.shape[1])
    coef = np.linalg.solve(normal, moment[..., None])[..., 0]
    b, c = coef[:, -2], coef[:, -1]
    ok &= c > 0
    vertex = np.where(ok, centre - b / (2 * np.where(ok, c, 1.0)), np.nan)
    scored = np.broadcast_to(ys, counts.shape)
    best = x[np.argmin(np.where(counts > 0, scored, np.inf), axis=1)]
    return np.where(ok, vertex, best)


def _bowl(x: np.ndarray, y: np.ndarray, groups: np.ndarray, vertex: float, primary: float
          ) -> tuple[float, float]:
    """(loss at ``vertex`` on the primary seed's level, curvature per octave² relative to
    that loss) of the least-squares parabola."""
    centre = float(x.mean())
    coef = np.linalg.lstsq(_design(x, groups, centre), y, rcond=None)[0]
    levels = np.unique(groups)
    level = coef[int(np.flatnonzero(levels == primary)[0])] if primary in levels else coef[0]
    loss = float(level + coef[-2] * (vertex - centre) + coef[-1] * (vertex - centre) ** 2)
    return loss, float(coef[-1] / loss)


def _lr_optimum(x: np.ndarray, y: np.ndarray, groups: np.ndarray, diverged: float | None, *,
                window: float, bootstrap: int, rng: np.random.Generator, noise: float | None,
                primary: float) -> tuple[Estimate, np.ndarray, float, float | None, list[str]]:
    """LR optimum in log2 units: (estimate, bootstrap samples, loss there, relative
    curvature of the bowl, flags). The best trial and the bracketing are read on the
    primary seed's trials (levels differ between seeds); the parabola uses every seed."""
    on_primary = groups == primary if (groups == primary).any() else np.ones(x.size, bool)
    best = int(np.flatnonzero(on_primary)[np.argmin(y[on_primary])])
    xb, yb = float(x[best]), float(y[best])
    distinct = np.unique(x[on_primary])
    below, above = distinct[distinct < xb], distinct[distinct > xb]
    flags: list[str] = []
    if below.size and above.size:
        keep = fit_window(x, xb, window, distinct)
        xw, yw, gw = x[keep], y[keep], groups[keep]
        vertex = parabola_vertex(xw, yw, gw)
        if math.isnan(vertex):
            flags.append(f"no bowl: the parabola through the LRs near the best opens "
                         f"downward; using the best trial's LR 2^{xb:.2f}, interval "
                         f"between its neighbours")
            low, high = float(below.max()), float(above.min())
        else:
            if not xw.min() <= vertex <= xw.max():
                flags.append(f"the parabola's vertex 2^{vertex:.2f} lies outside the fitted "
                             f"LRs; clamped to them")
            vertex = float(np.clip(vertex, xw.min(), xw.max()))
            counts = _resample_counts(xw.size, bootstrap, rng)
            jitter = None
            if noise:  # each resample's losses redrawn with the seed noise measured
                jitter = rng.normal(0.0, noise, size=counts.shape) * yw[None, :]
            samples = np.clip(_bootstrap_vertices(xw, yw, gw, counts, jitter),
                              xw.min(), xw.max())
            low, high = percentiles(samples)
            estimate = Estimate(value=vertex, interval=(min(low, vertex), max(high, vertex)),
                                method="quadratic", trials=int(xw.size))
            loss, curvature = _bowl(xw, yw, gw, vertex, primary)
            return _cap(estimate, samples, loss, curvature, x, diverged, flags)
    elif above.size:  # best at the lowest sampled LR
        flags.append(f"not bracketed below: the best LR 2^{xb:.2f} is the smallest sampled; "
                     f"the optimum may be lower (widen --lr-range down)")
        low, high = xb - window, float(above.min())
    elif below.size:  # best at the highest sampled (completed) LR
        if diverged is not None:
            flags.append(f"optimum at the edge of stability: the best LR 2^{xb:.2f} is the "
                         f"largest that completed, below the diverged 2^{diverged:.2f}")
            low, high = float(below.max()), xb + (diverged - xb) / 2
        else:
            flags.append(f"not bracketed above: the best LR 2^{xb:.2f} is the largest "
                         f"sampled; the optimum may be higher (widen --lr-range up)")
            low, high = float(below.max()), xb + window
    else:
        flags.append(f"one LR only (2^{xb:.2f}): no bowl to fit")
        low, high = xb - window, xb + window
    # best-point fallback: the data only says the optimum lies between the best LR's
    # neighbours; its bootstrap samples spread uniformly over that interval
    samples = rng.uniform(low, high, size=bootstrap)
    estimate = Estimate(value=xb, interval=(low, high), method="best-point",
                        trials=int(x.size))
    return _cap(estimate, samples, yb, None, x, diverged, flags)
def _cap(estimate: Estimate, samples: np.ndarray, loss: float, curvature: float | None,
         x: np.ndarray, diverged: float | None, flags: list[str]):
    """Keep the optimum below the smallest diverged LR: at most the largest LR known to be
    stable (a completed trial below it)."""
    if diverged is None:
        return estimate, samples, loss, curvature, flags
    stable = x[x < diverged]
    cap = float(stable.max()) if stable.size else diverged - 1.0
    if estimate.value > cap:
        flags.append(f"LR optimum 2^{estimate.value:.2f} capped at 2^{cap:.2f}, the largest "
                     f"stable LR below the diverged 2^{diverged:.2f}")
    low, high = estimate.interval
    estimate = estimate.model_copy(update={"value": min(estimate.value, cap),
                                           "interval": (min(low, cap), min(high, diverged))})
    return estimate, np.minimum(samples, diverged), loss, curvature, flags


def _band_median(codes: np.ndarray, losses: np.ndarray, *, band: float, bootstrap: int,
                 rng: np.random.Generator) -> tuple[float, tuple[float, float], np.ndarray, int]:
    """Loss-weighted median of ``codes`` over the near-optimal band, with its bootstrap.

    Weights fall as exp(−Δloss / band) (1 at the best trial, 1/e at the band's edge). The
    median is one of the sampled values, so a categorical choice (λ = 0, a batch size)
    stays a choice that was actually tried.
    """
    best = losses.min()
    excess = (losses - best) / (band * best)
    inside = np.flatnonzero(excess <= 1.0)
    if inside.size < MIN_BAND_TRIALS:
        inside = np.argsort(losses)[:MIN_BAND_TRIALS]
    order = inside[np.argsort(codes[inside], kind="stable")]
    values, weights = codes[order], np.exp(-excess[order])

    def median(w: np.ndarray) -> np.ndarray:  # w: (B, n) weights aligned with `values`
        cumulative = np.cumsum(w, axis=-1)
        return values[(cumulative < cumulative[..., -1:] / 2).sum(axis=-1)]

    value = float(median(weights[None, :])[0])
    samples = median(_resample_counts(values.size, bootstrap, rng) * weights)
    low, high = percentiles(samples)
    return value, (min(low, value), max(high, value)), samples, int(values.size)


class WidthFit:
    """One width's evidence plus the bootstrap samples (log2 codes) the transfer fit uses."""

    def __init__(self, evidence: WidthEvidence, codes: dict[str, tuple[float, np.ndarray]]):
        self.evidence, self.codes = evidence, codes


def zero_code(config: StudyConfig) -> float:
    """λ = 0 in log2 units: one octave below the searched range (log2 0 is −∞)."""
    return math.log2(config.space.weight_decay[0]) - 1.0


def fit_width(width: int, rows: list[TrialRecord], config: StudyConfig, *, band: float,
              window: float, bootstrap: int, rng: np.random.Generator,
              noise: float | None = None) -> WidthFit:
    """What width ``width``'s trials ``rows`` say. ``noise`` is the seed noise of one run's
    loss, relative (:func:`seed_noise`); when given, every bootstrap resample redraws the
    losses with it, so the LR interval covers what another seed would have found."""
    complete = [r for r in rows if r.status is TrialStatus.COMPLETE and r.hparams is not None
                and r.final_val_loss is not None and math.isfinite(r.final_val_loss)]
    diverged_rows = [r for r in rows if r.status is TrialStatus.DIVERGED and r.hparams]
    diverged_lr = min((r.hparams.lr for r in diverged_rows), default=None)
    losses = np.array([r.final_val_loss for r in complete])
    lrs = np.log2([r.hparams.lr for r in complete])
    seeds = np.array([config.seed if r.seed is None else r.seed for r in complete], float)
    # seed replicates sit on their own level of loss: the flat hparams' band is read on the
    # study seed's trials only, the LR bowl on all of them with one level per seed
    primary = seeds == config.seed
    searched = config.space.searched
    optima: dict[str, Estimate] = {}
    codes: dict[str, tuple[float, np.ndarray]] = {}
    flags: list[str] = []

    batch = config.space.base.batch_size
    batches = np.log2([r.hparams.batch_size for r in complete])
    if "batch_size" in searched:
        value, interval, samples, used = _band_median(batches[primary], losses[primary],
                                                      band=band, bootstrap=bootstrap, rng=rng)
        batch = round(2.0**value)
        optima["batch_size"] = Estimate(value=batch, interval=tuple(2.0**v for v in interval),
                                        method="band-median", trials=used)
        codes["batch_size"] = (value, samples)
    wds = np.zeros(len(complete))
    if "weight_decay" in searched:
        zero = zero_code(config)
        wds = np.array([math.log2(r.hparams.weight_decay) if r.hparams.weight_decay > 0
                        else zero for r in complete])
        value, interval, samples, used = _band_median(wds[primary], losses[primary], band=band,
                                                      bootstrap=bootstrap, rng=rng)
        optima["weight_decay"] = Estimate(
            value=_from_wd_code(value, zero), interval=tuple(_from_wd_code(v, zero)
                                                             for v in interval),
            method="band-median", trials=used)
        codes["weight_decay"] = (value, samples)

    # The LR bowl is read at the optimum of the other hparams: their losses would blur it.
    # Batch moves the LR optimum (√k, docs/spec.md §4): trials at the optimum batch when they
    # span three LRs, else every trial with its LR moved to the optimum batch by the √k rule.
    # Weight decay adds loss: trials within `window` octaves of its optimum when they still
    # bracket the best LR.
    x, y, g = lrs, losses, seeds
    if "batch_size" in searched:
        at_batch = batches == math.log2(batch)
        if np.unique(lrs[at_batch]).size >= 3:
            x, y, g = lrs[at_batch], losses[at_batch], seeds[at_batch]
            wds = wds[at_batch] if "weight_decay" in searched else wds
        else:
            x = lrs + 0.5 * (math.log2(batch) - batches)
            flags.append(f"note: fewer than three LRs at the optimum batch {batch}: LRs of "
                         f"other batches moved to it by the √k rule")
    if "weight_decay" in searched:
        near = np.abs(wds - codes["weight_decay"][0]) <= window
        if _brackets(x[near], y[near]):
            x, y, g = x[near], y[near], g[near]
        else:
            flags.append("note: the trials near the optimum weight decay do not bracket the "
                         "best LR: the LR bowl is read across every weight decay")
    diverged_code = math.log2(diverged_lr) if diverged_lr is not None else None
    estimate, samples, loss, curvature, lr_flags = _lr_optimum(
        x, y, g, diverged_code, window=window, bootstrap=bootstrap, rng=rng, noise=noise,
        primary=float(config.seed))
    flags += lr_flags
    codes["lr"] = (estimate.value, samples)
    optima = {"lr": Estimate(value=2.0**estimate.value,
                             interval=tuple(2.0**v for v in estimate.interval),
                             method=estimate.method, trials=estimate.trials), **optima}
    evidence = WidthEvidence(
        width=width, complete=len(complete), diverged=len(diverged_rows),
        ignored=len(rows) - len(complete) - len(diverged_rows),
        best_loss=float(losses[primary].min() if primary.any() else losses.min()),
        loss_at_optimum=loss, curvature=curvature, diverged_lr=diverged_lr, optima=optima,
        flags=tuple(flags))
    return WidthFit(evidence, codes)


class SeedNoise(FrozenConfig):
    """How much one run's loss depends on its seed, measured on LRs run with two seeds.

    Paired runs (one seed) share their init and batches, so their bowl is smooth and its
    bootstrap interval says nothing about another seed. Another seed moves the bowl in two
    ways: a *level* shift of every LR alike (moves no optimum) and a *shape* change that
    differs from LR to LR (moves the vertex). ``shape`` is what the intervals use.
    """

    widths: tuple[int, ...] = Field(description="widths with seed replicates")
    points: int = Field(description="LRs run with more than one seed")
    shape: float = Field(description="σ of one run's loss about its seed's level, relative")
    level: float = Field(description="mean |offset| between the seeds' levels, relative")


def seed_noise(rows: list[TrialRecord], config: StudyConfig) -> SeedNoise | None:
    """The seed noise of ``rows`` (any widths): for each trial at another seed than the
    study's, its loss minus the study seed's at the same point; per width and seed, the
    spread of those differences about their mean is the shape noise (a difference holds two
    runs' noise: σ² = var/2), their mean the level. None without two shared points."""
    by_point: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r.completed_loss is None or r.hparams is None:
            continue
        key = (r.width, r.hparams.model_copy(update={"lr": 0.0}), round(math.log2(r.hparams
                                                                                .lr), 6))
        by_point.setdefault(key, {})[config.seed if r.seed is None else r.seed] = \
            r.completed_loss
    diffs: dict[tuple, list[tuple[float, float]]] = {}  # (width, flat, seed) → (Δ, mean)
    for (width, flat, _), losses in by_point.items():
        if config.seed not in losses:
            continue
        for seed, loss in losses.items():
            if seed != config.seed:
                reference = losses[config.seed]
                diffs.setdefault((width, flat, seed), []).append(
                    ((loss - reference), (loss + reference) / 2))
    squares, dof, levels, widths, points = 0.0, 0, [], set(), 0
    for (width, _, _), pairs in diffs.items():
        if len(pairs) < 2:
            continue
        delta = np.array([d for d, _ in pairs])
        mean = np.array([m for _, m in pairs])
        relative = delta / mean
        squares += float(((relative - relative.mean()) ** 2).sum())
        dof += len(pairs) - 1
        levels.append(abs(float(relative.mean())))
        widths.add(width)
        points += len(pairs)
    if dof == 0:
        return None
    return SeedNoise(widths=tuple(sorted(widths)), points=points,
                     shape=math.sqrt(squares / dof / 2), level=float(np.mean(levels)))


def _brackets(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the best of (x, y) has a sampled LR on each side of it."""
    if x.size == 0:
        return False
    best = x[np.argmin(y)]
    return bool((x < best).any() and (x > best).any())


def _from_wd_code(code: float, zero: float) -> float:
    return 0.0 if code < zero + 0.5 else 2.0**code


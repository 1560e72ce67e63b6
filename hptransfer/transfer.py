"""The transfer predictor: the optimum hparams at a width too large to tune (SPEC §3–5).

Three steps, each with a recorded result (docs/transfer.md explains the choices):

1. **Optimum per width.** The LR optimum of one width is the vertex of a quadratic in
   log2(lr) fitted to the completed trials within ``window`` octaves of the best one (the
   loss is roughly a parabola in log2 lr near its minimum, SPEC §5), with a bootstrap
   interval (trials resampled, quadratic refitted). Diverged trials are not losses: the
   smallest diverged LR bounds the optimum from above. Weight decay and batch size, whose
   loss surfaces are flat, come from the near-optimal *band* (DeepSeek, Step Law): the
   loss-weighted median over the trials within ``band`` of the best loss.
2. **Transfer across widths.** Per hparam, log2(optimum) against log2(width) by weighted
   least squares (weights from each width's bootstrap spread); the slope is the drift in
   octaves per doubling of width, with a bootstrap interval. A slope interval containing 0
   means µP transfer holds: the prediction is the weighted mean (constant model). Otherwise
   it is extrapolated log-linearly, and a slope beyond ``DRIFT_THRESHOLD`` is announced
   loudly. A leave-one-width-out check predicts each width from the others.
3. **Beyond width.** Named rules for weight decay (by the study's convention, SPEC §3), a
   different target batch (√k), a longer horizon (η* ∝ D^−β) and depth (not supported yet).

>>> import numpy as np
>>> x = np.log2([2.0**-8, 2.0**-6, 2.0**-4]); y = 3.0 + 0.05 * (x + 6.5) ** 2
>>> round(float(_vertex(x, y)), 3)
-6.5
"""

from __future__ import annotations

import math
import warnings
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from hptransfer.hparams import HParams, Optimizer, Schedule, WeightDecay
from hptransfer.spec import AttentionScale, FrozenConfig, ModelSpec, NormGain, Parametrization
from hptransfer.study import StudyConfig, StudyError, TrialRecord, TrialStatus

__all__ = ["Baseline", "Estimate", "Evidence", "Prediction", "PredictionError", "Rule",
           "TransferFit", "TransferModel", "WidthEvidence", "predict_from_trials",
           "predict_hparams"]

# ---- the choices, each with its reason ------------------------------------------------------

# LR fit window: the best trial's LR ± 2 octaves (and always its nearest sampled neighbour on
# each side). The warm-start grid is 2 octaves apart, so the window always holds the grid
# points bracketing the minimum; within ±2 octaves the bowl is close to a parabola, while
# farther out it turns asymmetric (a slow climb at low LR, a wall near divergence).
WINDOW_OCTAVES = 2.0
# Near-optimal band for weight decay and batch size: trials within 1% of the best loss. The
# SPEC's 0.25% (DeepSeek) is calibrated on large runs whose seed noise is ~0.1%; on short
# CPU proxies it keeps one or two trials, while 1% is about what half an octave of LR costs
# on their bowls, so the band holds the near-optimal plateau.
BAND = 0.01
MIN_BAND_TRIALS = 3  # the band is widened to the 3 best trials when it holds fewer
MIN_COMPLETE = 3  # completed trials a width needs (a parabola needs three LRs)
# Drift alarm: a slope whose interval excludes 0 and that exceeds 0.25 octave per doubling
# moves the optimum by 1–1.5 octaves over the 4–6 doublings of a typical proxy → target
# extrapolation: more than the half-octave a µP prediction should be good to.
DRIFT_THRESHOLD = 0.25
# Warn when the slope interval, carried over the doublings to the target, allows the
# optimum to move more than this many octaves (the proxies do not pin the slope down).
EXTRAPOLATION_SPREAD_WARN = 1.0
LOO_WARN = 0.5  # octaves: a leave-one-width-out miss beyond this is reported
MIN_SPREAD = 0.05  # octaves: floor of a width's bootstrap spread in the WLS weights
CONFIDENCE = 0.95
# Horizon: at fixed batch the optimal LR falls like D^−β as training gets longer. β = 0.3 is
# a *default*, not fitted: Bjorck et al. 2025 ("Scaling Optimal LR Across Token Horizons",
# ICLR 2025, arXiv 2409.19913) fit LR*(D) = B·D^−β with β of about 0.3 on their LLMs, and
# Filatov et al. 2025 (arXiv 2510.03871) measure η*(D) ∝ D^−0.28. A study holds one budget,
# so β cannot be fitted from it; fitting β from several budgets is future work.
HORIZON_EXPONENT = 0.3
# Closed forms of SPEC §4 (SP fits: absolute per-step LR, batch in tokens).
STEP_LAW = {"lr": (1.79, -0.713, 0.307), "batch_tokens": (0.58, 0.571)}
DEEPSEEK = {"lr": (0.3118, -0.125), "batch_tokens": (0.292, 0.327)}

HF_WARNING = ("Hugging Face Trainer applies ONE global learning rate to every tensor: the µP "
              "per-tensor multipliers are NOT applied. Under µP the hidden and readout "
              "matrices of this model need {hidden}; use the torch param-groups snippet "
              "(Prediction.to_torch_param_groups_snippet) or pass your own optimizer to "
              "Trainer(optimizers=...). per_device_train_batch_size × devices × "
              "gradient_accumulation_steps must equal {batch}. weight_decay here is "
              "PyTorch's coupled λ for the global LR ({wd_note}).")


class PredictionError(ValueError):
    """A study that cannot support a prediction, with what to do about it."""


class TransferModel(str, Enum):
    CONSTANT = "constant"  # µP holds: the optimum does not move with width
    LOG_LINEAR = "log-linear"  # the optimum drifts: log2 opt = a + slope · log2 width


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
    diverged_lr: float | None = Field(description="smallest diverged LR: bounds the optimum")
    optima: dict[str, Estimate]
    flags: tuple[str, ...] = Field((), description="fallbacks and caps (each also a warning) "
                                                   "and notes on which trials were used")


class TransferFit(FrozenConfig):
    """One hparam's optimum against width: log2(opt) = a + slope · log2(width)."""

    hparam: str
    model: TransferModel
    slope: float = Field(description="octaves the optimum moves per doubling of width")
    slope_interval: tuple[float, float]
    target: float = Field(description="predicted value at the target width, before the "
                                      "beyond-width rules")
    target_interval: tuple[float, float]
    leave_one_out: dict[int, float] = Field(
        description="width → error in octaves when predicting it from the other widths")


class Rule(FrozenConfig):
    """A rule applied to go from the proxies to the target."""

    name: str
    detail: str


class Baseline(FrozenConfig):
    """A prediction some other way, to compare against (``--baseline``)."""

    lr: float
    batch_size: int | None = None
    batch_tokens: float | None = None
    weight_decay: float | None = None
    note: str


class Evidence(FrozenConfig):
    widths: tuple[WidthEvidence, ...]
    fits: dict[str, TransferFit]
    searched: tuple[str, ...]
    proxy_depth: int
    proxy_tokens: int = Field(description="training tokens of one proxy trial")
    proxy_batch: int = Field(description="the proxies' optimum batch (sequences)")
    bootstrap: int
    seed: int
    band: float
    window_octaves: float


class Prediction(FrozenConfig):
    """Hparams for a target model, with intervals, the rules applied, warnings and the
    evidence; JSON via ``model_dump_json()``."""

    study: str
    target_width: int
    target_depth: int
    target_tokens: int
    spec: ModelSpec = Field(description="the target model (the study's spec at the target)")
    hparams: HParams
    intervals: dict[str, tuple[float, float]] = Field(
        description="per tuned hparam, the 95% interval [low, high]")
    rules: tuple[Rule, ...]
    warnings: tuple[str, ...]
    evidence: Evidence
    baselines: dict[str, Baseline] = Field(default_factory=dict)

    def hidden_lr(self) -> str:
        """The per-step LR of the hidden matrices at the target, in words (display only:
        the arithmetic itself is :func:`hptransfer.parametrization.lr_multiplier`)."""
        alpha, spec = self.hparams.lr, self.spec
        if spec.param is Parametrization.SP:
            return f"α = {alpha:.4g} (SP: one LR)"
        if spec.param is Parametrization.MUP:
            m = spec.width_multiplier
            return f"α/m = {alpha / m:.4g} (m = {m:g})"
        return f"α/fan_in = {alpha / spec.width:.4g} for M→· matrices"

    def to_torch_param_groups_snippet(self) -> str:
        """Python code building hptransfer's Transformer at the target width with µP
        per-tensor LRs (:func:`hptransfer.parametrization.param_groups`) and the schedule."""
        h = self.hparams
        steps = math.ceil(self.target_tokens / (h.batch_size * self.spec.seq_len))
        if h.optimizer is Optimizer.LION:
            make = ("for group in groups:\n    group.pop(\"eps\")  # Lion has no ε\n"
                    "optimizer = Lion(groups, betas=(hparams.beta1, hparams.beta2))")
            extra = "from hptransfer.optimizer import Lion\n"
        else:
            make = "optimizer = torch.optim.AdamW(groups, betas=(hparams.beta1, hparams.beta2))"
            extra = ""
        clip = (f"    torch.nn.utils.clip_grad_norm_(model.parameters(), {h.grad_clip!r})\n"
                if h.grad_clip > 0 else "")
        return (
            f"# µP hparams predicted by hptransfer (study {self.study!r}) for width "
            f"{self.target_width}; hidden matrices: {self.hidden_lr()}\n"
            "import torch\n\n"
            "from hptransfer.hparams import HParams\n"
            "from hptransfer.model import Transformer\n"
            f"{extra}"
            "from hptransfer.parametrization import param_groups\n"
            "from hptransfer.schedule import lr_factor\n"
            "from hptransfer.spec import ModelSpec\n\n"
            f"spec = ModelSpec.model_validate_json({self.spec.model_dump_json()!r})\n"
            f"hparams = HParams.model_validate_json({h.model_dump_json()!r})\n"
            "model = Transformer(spec)\n"
            "# one group per (lr, weight_decay, eps), absolute values from the µP table\n"
            "groups = param_groups(model, spec, hparams)\n"
            f"{make}\n"
            "peak_lrs = [group[\"lr\"] for group in optimizer.param_groups]\n"
            f"total_steps = {steps}  # {self.target_tokens} tokens / (batch {h.batch_size} × "
            f"seq {self.spec.seq_len})\n\n\n"
            "def before_step(step: int) -> None:\n"
            "    \"\"\"Call after loss.backward(), before optimizer.step(): schedule every "
            "group and clip the gradient.\"\"\"\n"
            "    for group, peak in zip(optimizer.param_groups, peak_lrs):\n"
            "        group[\"lr\"] = peak * lr_factor(step, total_steps=total_steps, "
            "hparams=hparams)\n"
            f"{clip}")

    def hf_warning(self) -> str:
        h = self.hparams
        note = (f"independent λ = {h.weight_decay:g} converted to λ/α"
                if h.weight_decay_rule is WeightDecay.INDEPENDENT else
                f"{h.weight_decay_rule.value} λ unchanged")
        return HF_WARNING.format(hidden=self.hidden_lr(), batch=h.batch_size, wd_note=note)

    def to_hf_training_arguments(self) -> dict[str, Any]:
        """Hugging Face ``TrainingArguments`` fields. Warns (UserWarning, and see
        :meth:`hf_warning`): HF uses one global LR, so µP's per-tensor LRs are lost."""
        h = self.hparams
        weight_decay = (h.weight_decay / h.lr if h.weight_decay_rule is
                        WeightDecay.INDEPENDENT else h.weight_decay)
        warnings.warn(self.hf_warning(), UserWarning, stacklevel=2)
        return {
            "learning_rate": h.lr,
            "weight_decay": weight_decay,
            "per_device_train_batch_size": h.batch_size,
            "lr_scheduler_type": "cosine" if h.schedule is Schedule.COSINE else "linear",
            "warmup_ratio": h.warmup_fraction,
            "adam_beta1": h.beta1,
            "adam_beta2": h.beta2,
            "adam_epsilon": h.eps,
            "max_grad_norm": h.grad_clip,
            "optim": "lion_32bit" if h.optimizer is Optimizer.LION else "adamw_torch",
        }


# ---- step 1: the optimum of one width -------------------------------------------------------

def _percentiles(samples: np.ndarray) -> tuple[float, float]:
    tail = 50.0 * (1.0 - CONFIDENCE)
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def _resample_counts(n: int, bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """(bootstrap, n) counts of each trial in each resample (cases bootstrap)."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=bootstrap).astype(float)


def _vertex(x: np.ndarray, y: np.ndarray) -> float:
    """Vertex of the least-squares parabola through (x, y); nan when it opens downward."""
    c, b, _ = np.polyfit(x, y, 2)
    return -b / (2 * c) if c > 0 else math.nan


def _bootstrap_vertices(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The parabola vertex of every resample at once (weighted normal equations). A resample
    with fewer than three distinct LRs, or whose parabola opens downward, takes its best
    point instead: the vertex is then undefined, the best point is what the data says."""
    centre = x.mean()
    design = np.stack([np.ones_like(x), x - centre, (x - centre) ** 2], axis=1)  # (n, 3)
    normal = np.einsum("bn,ni,nj->bij", counts, design, design)  # (B, 3, 3)
    moment = np.einsum("bn,ni,n->bi", counts, design, y)  # (B, 3)
    distinct_x = np.unique(x)
    groups = (x[:, None] == distinct_x[None, :]).astype(float)  # (n, u)
    distinct = ((counts @ groups) > 0).sum(axis=1)
    ok = distinct >= 3
    normal[~ok] = np.eye(3)
    coef = np.linalg.solve(normal, moment[..., None])[..., 0]
    c, b = coef[:, 2], coef[:, 1]
    ok &= c > 0
    vertex = np.where(ok, centre - b / (2 * np.where(ok, c, 1.0)), np.nan)
    best = x[np.argmin(np.where(counts > 0, y[None, :], np.inf), axis=1)]
    return np.where(ok, vertex, best)


def _lr_optimum(x: np.ndarray, y: np.ndarray, diverged: float | None, *, window: float,
                bootstrap: int, rng: np.random.Generator
                ) -> tuple[Estimate, np.ndarray, float, list[str]]:
    """LR optimum in log2 units: (estimate, bootstrap samples, loss there, flags)."""
    best = int(np.argmin(y))
    xb, yb = float(x[best]), float(y[best])
    distinct = np.unique(x)
    below, above = distinct[distinct < xb], distinct[distinct > xb]
    flags: list[str] = []
    if below.size and above.size:
        keep = (np.abs(x - xb) <= window + 1e-9) | (x == below.max()) | (x == above.min())
        xw, yw = x[keep], y[keep]
        vertex = _vertex(xw, yw)
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
            samples = np.clip(_bootstrap_vertices(xw, yw, _resample_counts(
                xw.size, bootstrap, rng)), xw.min(), xw.max())
            low, high = _percentiles(samples)
            estimate = Estimate(value=vertex, interval=(min(low, vertex), max(high, vertex)),
                                method="quadratic", trials=int(xw.size))
            loss = float(np.polyval(np.polyfit(xw, yw, 2), vertex))
            return _cap(estimate, samples, loss, x, diverged, flags)
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
    return _cap(estimate, samples, yb, x, diverged, flags)


def _cap(estimate: Estimate, samples: np.ndarray, loss: float, x: np.ndarray,
         diverged: float | None, flags: list[str]):
    """Keep the optimum below the smallest diverged LR: at most the largest LR known to be
    stable (a completed trial below it)."""
    if diverged is None:
        return estimate, samples, loss, flags
    stable = x[x < diverged]
    cap = float(stable.max()) if stable.size else diverged - 1.0
    if estimate.value > cap:
        flags.append(f"LR optimum 2^{estimate.value:.2f} capped at 2^{cap:.2f}, the largest "
                     f"stable LR below the diverged 2^{diverged:.2f}")
    low, high = estimate.interval
    estimate = estimate.model_copy(update={"value": min(estimate.value, cap),
                                           "interval": (min(low, cap), min(high, diverged))})
    return estimate, np.minimum(samples, diverged), loss, flags


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
    low, high = _percentiles(samples)
    return value, (min(low, value), max(high, value)), samples, int(values.size)


class _WidthFit:
    """One width's evidence plus the bootstrap samples (log2 codes) the transfer fit uses."""

    def __init__(self, evidence: WidthEvidence, codes: dict[str, tuple[float, np.ndarray]]):
        self.evidence, self.codes = evidence, codes


def _zero_code(config: StudyConfig) -> float:
    """λ = 0 in log2 units: one octave below the searched range (log2 0 is −∞)."""
    return math.log2(config.space.weight_decay[0]) - 1.0


def _fit_width(width: int, rows: list[TrialRecord], config: StudyConfig, *, band: float,
               window: float, bootstrap: int, rng: np.random.Generator) -> _WidthFit:
    complete = [r for r in rows if r.status is TrialStatus.COMPLETE and r.hparams is not None
                and r.final_val_loss is not None and math.isfinite(r.final_val_loss)]
    diverged_rows = [r for r in rows if r.status is TrialStatus.DIVERGED and r.hparams]
    diverged_lr = min((r.hparams.lr for r in diverged_rows), default=None)
    losses = np.array([r.final_val_loss for r in complete])
    lrs = np.log2([r.hparams.lr for r in complete])
    searched = config.space.searched
    optima: dict[str, Estimate] = {}
    codes: dict[str, tuple[float, np.ndarray]] = {}
    flags: list[str] = []

    batch = config.space.base.batch_size
    batches = np.log2([r.hparams.batch_size for r in complete])
    if "batch_size" in searched:
        value, interval, samples, used = _band_median(batches, losses, band=band,
                                                      bootstrap=bootstrap, rng=rng)
        batch = round(2.0**value)
        optima["batch_size"] = Estimate(value=batch, interval=tuple(2.0**v for v in interval),
                                        method="band-median", trials=used)
        codes["batch_size"] = (value, samples)
    wds = np.zeros(len(complete))
    if "weight_decay" in searched:
        zero = _zero_code(config)
        wds = np.array([math.log2(r.hparams.weight_decay) if r.hparams.weight_decay > 0
                        else zero for r in complete])
        value, interval, samples, used = _band_median(wds, losses, band=band,
                                                      bootstrap=bootstrap, rng=rng)
        optima["weight_decay"] = Estimate(
            value=_from_wd_code(value, zero), interval=tuple(_from_wd_code(v, zero)
                                                             for v in interval),
            method="band-median", trials=used)
        codes["weight_decay"] = (value, samples)

    # The LR bowl is read at the optimum of the other hparams: their losses would blur it.
    # Batch moves the LR optimum (√k, SPEC §4): trials at the optimum batch when they span
    # three LRs, else every trial with its LR moved to the optimum batch by the √k rule.
    # Weight decay adds loss: trials within `window` octaves of its optimum when they still
    # bracket the best LR.
    x, y = lrs, losses
    if "batch_size" in searched:
        at_batch = batches == math.log2(batch)
        if np.unique(lrs[at_batch]).size >= 3:
            x, y = lrs[at_batch], losses[at_batch]
            wds = wds[at_batch] if "weight_decay" in searched else wds
        else:
            x = lrs + 0.5 * (math.log2(batch) - batches)
            flags.append(f"note: fewer than three LRs at the optimum batch {batch}: LRs of "
                         f"other batches moved to it by the √k rule")
    if "weight_decay" in searched:
        near = np.abs(wds - codes["weight_decay"][0]) <= window
        if _brackets(x[near], y[near]):
            x, y = x[near], y[near]
        else:
            flags.append("note: the trials near the optimum weight decay do not bracket the "
                         "best LR: the LR bowl is read across every weight decay")
    diverged_code = math.log2(diverged_lr) if diverged_lr is not None else None
    estimate, samples, loss, lr_flags = _lr_optimum(x, y, diverged_code, window=window,
                                                    bootstrap=bootstrap, rng=rng)
    flags += lr_flags
    codes["lr"] = (estimate.value, samples)
    optima = {"lr": Estimate(value=2.0**estimate.value,
                             interval=tuple(2.0**v for v in estimate.interval),
                             method=estimate.method, trials=estimate.trials), **optima}
    evidence = WidthEvidence(
        width=width, complete=len(complete), diverged=len(diverged_rows),
        ignored=len(rows) - len(complete) - len(diverged_rows),
        best_loss=float(losses.min()), loss_at_optimum=loss, diverged_lr=diverged_lr,
        optima=optima, flags=tuple(flags))
    return _WidthFit(evidence, codes)


def _brackets(x: np.ndarray, y: np.ndarray) -> bool:
    """Whether the best of (x, y) has a sampled LR on each side of it."""
    if x.size == 0:
        return False
    best = x[np.argmin(y)]
    return bool((x < best).any() and (x > best).any())


def _from_wd_code(code: float, zero: float) -> float:
    return 0.0 if code < zero + 0.5 else 2.0**code


# ---- step 2: the optimum against width ------------------------------------------------------

def _weighted_line(x: np.ndarray, y: np.ndarray, w: np.ndarray):
    """WLS slope and weighted means; ``y`` may be (..., k) for many fits at once."""
    xm = (w * x).sum() / w.sum()
    ym = (y * w).sum(axis=-1) / w.sum()
    spread = (w * (x - xm) ** 2).sum()
    if spread == 0:  # one width: no slope to see
        return np.zeros_like(ym), ym, xm
    slope = ((y - ym[..., None]) * (w * (x - xm))).sum(axis=-1) / spread
    return slope, ym, xm


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted median along the last axis of ``values`` (..., k), one weight per column."""
    order = np.argsort(values, axis=-1, kind="stable")
    ranked = np.take_along_axis(values, order, axis=-1)
    cumulative = np.cumsum(weights[order], axis=-1)
    index = (cumulative < cumulative[..., -1:] / 2).sum(axis=-1, keepdims=True)
    return np.take_along_axis(ranked, index, axis=-1)[..., 0]


def _fit_across(hparam: str, widths: list[int], points: np.ndarray, samples: np.ndarray,
                target_width: int, *, bounds: tuple[float, float] | None = None
                ) -> TransferFit:
    """``points``: (k,) per-width optima in log2 units; ``samples``: (k, B) bootstraps.

    The constant model is the weighted mean for the LR, and the weighted median for weight
    decay and batch size, whose optima are choices that were tried (λ = 0 among them): a
    mean of "no decay" and "λ = 1e-3" is neither. ``bounds`` (the searched range) clamps the
    constant model: it does not extrapolate.
    """
    x, xt = np.log2(widths), math.log2(target_width)
    weights = 1.0 / np.maximum(samples.std(axis=1), MIN_SPREAD) ** 2
    slope, mean, xm = _weighted_line(x, points, weights)
    slopes, means, _ = _weighted_line(x, samples.T, weights)
    slope_interval = _percentiles(slopes)
    constant = slope_interval[0] <= 0.0 <= slope_interval[1]
    median = hparam != "lr"

    def centre(values: np.ndarray, w: np.ndarray) -> np.ndarray:
        if median:
            return _weighted_median(values, w)
        return (values * w).sum(axis=-1) / w.sum()

    if constant:
        target, targets = float(centre(points, weights)), centre(samples.T, weights)
        residuals, dof = points - target, len(widths) - 1
    else:
        target, targets = float(mean + slope * (xt - xm)), means + slopes * (xt - xm)
        residuals, dof = points - (mean + slope * (x - xm)), len(widths) - 2
    # widths that disagree beyond their own spreads: widen by the Birge ratio √(χ²/dof)
    if dof > 0 and not median:
        birge = math.sqrt(max(1.0, float((weights * residuals**2).sum()) / dof))
        targets = target + (targets - target) * birge
    low, high = _percentiles(targets)
    low, high = min(low, target), max(high, target)
    if constant and bounds is not None:
        target, low, high = (float(np.clip(v, *bounds)) for v in (target, low, high))

    leave_one_out = {}
    for i, width in enumerate(widths):
        rest = np.arange(len(widths)) != i
        s, m, c = _weighted_line(x[rest], points[rest], weights[rest])
        if constant or rest.sum() < 2:
            guess = centre(points[rest], weights[rest])
        else:
            guess = m + s * (x[i] - c)
        leave_one_out[width] = float(guess - points[i])
    return TransferFit(hparam=hparam, model=TransferModel.CONSTANT if constant else
                       TransferModel.LOG_LINEAR, slope=float(slope),
                       slope_interval=slope_interval, target=target,
                       target_interval=(low, high), leave_one_out=leave_one_out)


def _drift_causes(spec: ModelSpec, hparams: HParams) -> str:
    causes = []
    if spec.param is Parametrization.SP:
        causes.append("the standard parametrization (one global LR)")
    if spec.norm_gain is not NormGain.NONE:
        causes.append("trainable norm gains (they broke transfer in Lingle 2024)")
    if spec.param is not Parametrization.SP and spec.attention_scale is (
            AttentionScale.INV_SQRT_D):
        causes.append("attention scale 1/√D instead of µP's 1/D")
    if hparams.weight_decay_rule is WeightDecay.COUPLED and hparams.weight_decay > 0:
        causes.append("coupled weight decay (its per-step decay shrinks with width)")
    return ("; suspects in this study's spec: " + ", ".join(causes)) if causes else ""


# ---- step 3 and the whole prediction --------------------------------------------------------

def _proxy_tokens(config: StudyConfig) -> int:
    tokens_per_step = config.space.base.batch_size * config.spec.seq_len
    return config.budget.resolve_steps(tokens_per_step=tokens_per_step) * tokens_per_step


def _usable_widths(records: list[TrialRecord], study: str) -> tuple[dict[int, list], list[str]]:
    by_width: dict[int, list[TrialRecord]] = {}
    for record in records:
        by_width.setdefault(record.width, []).append(record)
    counts = {w: sum(1 for r in rows if r.status is TrialStatus.COMPLETE and r.final_val_loss
                     is not None and math.isfinite(r.final_val_loss))
              for w, rows in sorted(by_width.items())}
    listing = ", ".join(f"width {w}: {n} completed" for w, n in counts.items()) or "no trials"
    empty = [w for w, n in counts.items() if n == 0]
    if empty:
        raise PredictionError(
            f"study {study!r} has no completed trials at width(s) {empty} ({listing}); run "
            f"them first (hptransfer tune --study {study} --widths "
            f"{','.join(map(str, counts))} tops the study up), or check their status with "
            f"hptransfer status --study {study}")
    usable = {w: by_width[w] for w, n in counts.items() if n >= MIN_COMPLETE}
    if len(usable) < 2:
        raise PredictionError(
            f"study {study!r} cannot support a prediction: it needs at least two widths with "
            f"{MIN_COMPLETE} or more completed trials each ({listing}); tune a second width, "
            f"e.g. hptransfer tune --study {study} --widths 32,64")
    notes = [f"width {w} left out: {n} completed trial(s), fewer than {MIN_COMPLETE}"
             for w, n in counts.items() if 0 < n < MIN_COMPLETE]
    return usable, notes


_NAMES = {"lr": "LR", "weight_decay": "weight decay", "batch_size": "batch size"}


def _transfer_fits(fits: list[_WidthFit], config: StudyConfig, target_width: int
                   ) -> tuple[dict[str, TransferFit], float]:
    """One :class:`TransferFit` per searched hparam, and λ = 0's code in the fits' units."""
    widths = [f.evidence.width for f in fits]
    zero = _zero_code(config) if config.space.weight_decay is not None else 0.0
    transfer: dict[str, TransferFit] = {}
    for hparam in (h for h in ("lr", "weight_decay", "batch_size") if h in
                   config.space.searched):
        points = np.array([f.codes[hparam][0] for f in fits])
        samples = np.stack([f.codes[hparam][1] for f in fits])
        if hparam == "weight_decay" and _coupled_mup(config):
            # coupled λ under µP decays a hidden matrix by s·(α/m)·λ per step: compare widths
            # in base-width units λ·M₀/M (the target gets ×m back: the λ·m correction);
            # λ = 0 moves below every shifted code so it stays recognisable
            shifts = np.log2([w / config.spec.base_width for w in widths])
            original_zero, zero = zero, zero - max(0.0, float(shifts.max()))
            points = np.where(points < original_zero + 0.5, zero, points - shifts)
            samples = np.where(samples < original_zero + 0.5, zero, samples - shifts[:, None])
        bounds = None
        if hparam == "weight_decay":
            bounds = (zero, math.log2(config.space.weight_decay[1]) - (
                math.log2(target_width / config.spec.base_width) if _coupled_mup(config)
                else 0.0))
        elif hparam == "batch_size":
            bounds = (math.log2(min(config.space.batch_sizes)),
                      math.log2(max(config.space.batch_sizes)))
        transfer[hparam] = _fit_across(hparam, widths, points, samples, target_width,
                                       bounds=bounds)
    return transfer, zero


def _coupled_mup(config: StudyConfig) -> bool:
    return (config.space.base.weight_decay_rule is WeightDecay.COUPLED
            and config.spec.param is not Parametrization.SP)


class _Notes:
    """Rules applied and warnings, gathered while the prediction is assembled."""

    def __init__(self) -> None:
        self.rules: list[Rule] = []
        self.warnings: list[str] = []

    def rule(self, name: str, detail: str) -> None:
        self.rules.append(Rule(name=name, detail=detail))


def _judge_width_fits(transfer: dict[str, TransferFit], config: StudyConfig,
                      target_width: int, largest: int, notes: _Notes) -> None:
    """Name the width rule of every hparam; warn on drift, loose slopes and LOO misses."""
    doublings = math.log2(target_width / largest)
    for hparam, fit in transfer.items():
        (low, high), what = fit.slope_interval, _NAMES[hparam]
        if fit.model is TransferModel.CONSTANT:
            notes.rule(f"width-constant:{hparam}",
                       f"{what}: the slope interval [{low:+.2f}, {high:+.2f}] octave per "
                       f"doubling contains 0, so µP transfer holds: the weighted "
                       f"{'mean' if hparam == 'lr' else 'median'} of the widths' optima")
            spread = max(abs(low), abs(high)) * abs(doublings)
            if hparam == "lr" and spread > EXTRAPOLATION_SPREAD_WARN:
                notes.warnings.append(
                    f"the proxies pin the LR slope only to [{low:+.2f}, {high:+.2f}] octave "
                    f"per doubling; over the {doublings:.1f} doublings to width {target_width} "
                    f"that allows the optimum to move up to {spread:.1f} octaves: add a "
                    f"wider proxy width or more trials to narrow it")
        else:
            notes.rule(f"width-log-linear:{hparam}",
                       f"{what}: the optimum drifts {fit.slope:+.2f} octave per doubling "
                       f"(interval [{low:+.2f}, {high:+.2f}] excludes 0); extrapolated "
                       f"log-linearly over {doublings:.1f} doublings")
            if abs(fit.slope) > DRIFT_THRESHOLD:
                subject = "the optimum LR" if hparam == "lr" else f"the {what} optimum"
                notes.warnings.append(
                    f"transfer is not holding for this parametrization: {subject} moves "
                    f"{fit.slope:+.2f} octaves per doubling of width (95% interval "
                    f"[{low:+.2f}, {high:+.2f}]); the prediction extrapolates this drift"
                    + _drift_causes(config.spec, config.space.base))
        width, miss = max(fit.leave_one_out.items(), key=lambda kv: abs(kv[1]))
        if hparam == "lr" and abs(miss) > LOO_WARN:
            notes.warnings.append(f"leave-one-width-out: predicting width {width}'s LR optimum "
                                  f"from the other widths misses by {miss:+.2f} octaves")


def _lr_at_target(fit: TransferFit, bounds: list[float], *, proxy_batch: int,
                  target_batch: int | None, proxy_tokens: int, target_tokens: int | None,
                  notes: _Notes) -> tuple[float, float, float]:
    """log2 of the target LR and its interval: the width fit, then the stability bound,
    batch and horizon rules (each multiplies the LR, so it shifts the whole interval)."""
    code, (low, high) = fit.target, fit.target_interval
    if bounds and fit.model is TransferModel.CONSTANT and code >= math.log2(min(bounds)):
        cap = math.log2(min(bounds))
        notes.rule("divergence-cap",
                   f"LR set half an octave below 2^{cap:.2f}, the smallest LR that diverged "
                   f"at any proxy width (under µP the stable region transfers too)")
        code, high = cap - 0.5, min(high, cap)
        low = min(low, code)
    shift = 0.0
    if target_batch is not None and target_batch != proxy_batch:
        k = target_batch / proxy_batch
        shift += 0.5 * math.log2(k)
        notes.rule("batch-sqrt",
                   f"target batch {target_batch} is {k:g}× the proxies' optimum {proxy_batch}: "
                   f"LR × √{k:g} = ×{math.sqrt(k):.3g} (Adam below the critical batch, SPEC "
                   f"§4; the paper's 4× batch ablations moved the grid this way)")
    if target_tokens is not None and target_tokens != proxy_tokens:
        ratio = target_tokens / proxy_tokens
        factor = ratio**-HORIZON_EXPONENT
        shift += math.log2(factor)
        notes.rule("horizon-power-law",
                   f"target trains on {target_tokens:,} tokens, {ratio:.3g}× the proxies' "
                   f"{proxy_tokens:,}: LR × {ratio:.3g}^−{HORIZON_EXPONENT} = ×{factor:.3g} "
                   f"(η* ∝ D^−β; β = {HORIZON_EXPONENT} is a literature default, Bjorck et al. "
                   f"2025, not fitted: the study has one budget). The interval leaves out the "
                   f"rule's own uncertainty; batch is not scaled with the horizon (pass "
                   f"--target-batch; Step Law: B ∝ D^0.571)")
    return code + shift, low + shift, high + shift


def _weight_decay_at_target(fit: TransferFit | None, zero: float, config: StudyConfig,
                            target_width: int, notes: _Notes
                            ) -> tuple[float, tuple[float, float] | None]:
    """λ at the target by the study's convention (SPEC §3), and its interval."""
    base = config.space.base
    if fit is None and base.weight_decay == 0:
        return 0.0, None
    m = target_width / config.spec.base_width
    if _coupled_mup(config):
        notes.rule("weight-decay-coupled-xm",
                   f"coupled λ: per-step decay s(t)·(α/m)·λ shrinks with width under µP; "
                   f"proxy optima were compared as λ·M₀/M and multiplied by m = {m:g} at the "
                   f"target (λ·m correction)")
        notes.warnings.append(
            f"weight decay convention is coupled: under µP its effective decay shrinks like "
            f"1/m with width, so λ does not transfer as is; the prediction applies λ·m "
            f"(m = {m:g}). Prefer --weight-decay-rule independent (SPEC §3)")
    else:
        rule = base.weight_decay_rule
        how = {WeightDecay.INDEPENDENT: "per-step decay s(t)·λ",
               WeightDecay.COUPLED_SCALED: "per-step decay s(t)·α·λ",
               WeightDecay.COUPLED: "coupled decay with one global LR (SP)"}[rule]
        notes.rule(f"weight-decay-{rule.value}",
                   f"{rule.value} λ: {how} does not depend on width, so λ transfers unchanged")
    if fit is None:  # not searched: the fixed λ, which the coupled warning covers
        return base.weight_decay, None
    shift = math.log2(m) if _coupled_mup(config) else 0.0

    def decode(code: float) -> float:
        return 0.0 if code < zero + 0.5 else 2.0 ** (code + shift)

    return decode(fit.target), (decode(fit.target_interval[0]),
                                decode(fit.target_interval[1]))


def predict_from_trials(records: list[TrialRecord], config: StudyConfig, target_width: int, *,
                        study: str = "proxy", target_depth: int | None = None,
                        target_tokens: int | None = None, target_batch: int | None = None,
                        bootstrap: int = 1000, seed: int = 0, band: float = BAND,
                        window: float = WINDOW_OCTAVES) -> Prediction:
    """The prediction from a study's trial records and config (what
    :func:`predict_hparams` reads from storage); arguments as there."""
    if config.space.lr is None:
        raise PredictionError(f"study {study!r} did not search the learning rate (its search "
                              f"space fixes lr): there is no LR optimum to transfer; tune "
                              f"one with an --lr-range")
    if bootstrap < 50:
        raise PredictionError(f"bootstrap={bootstrap} is too few resamples for a 95% "
                              f"interval; use at least 50 (default 1000)")
    for name, value in (("target_depth", target_depth), ("target_tokens", target_tokens),
                        ("target_batch", target_batch)):
        if value is not None and value < 1:
            raise PredictionError(f"{name} must be a positive integer, got {value}")
    try:
        spec = ModelSpec(**{**config.spec.model_dump(), "width": target_width,
                            "depth": target_depth or config.spec.depth})
    except ValueError as error:
        raise PredictionError(f"target width {target_width}: {error}") from None

    usable, left_out = _usable_widths(records, study)
    rng = np.random.default_rng(seed)
    fits = [_fit_width(w, rows, config, band=band, window=window, bootstrap=bootstrap,
                       rng=rng) for w, rows in sorted(usable.items())]
    notes = _Notes()
    notes.warnings += left_out + [f"width {fit.evidence.width}: {flag}" for fit in fits
                                  for flag in fit.evidence.flags
                                  if not flag.startswith("note:")]
    transfer, zero = _transfer_fits(fits, config, target_width)
    _judge_width_fits(transfer, config, target_width, max(usable), notes)

    proxy_batch, batch_interval = config.space.base.batch_size, None
    if "batch_size" in transfer:
        low, high = transfer["batch_size"].target_interval
        batch_interval = (float(2 ** round(low)), float(2 ** round(high)))
        proxy_batch = 2 ** round(transfer["batch_size"].target)
    if target_batch is not None and target_batch != proxy_batch:
        batch_interval = None  # chosen by the user, not estimated
    proxy_tokens = _proxy_tokens(config)
    bounds = [f.evidence.diverged_lr for f in fits if f.evidence.diverged_lr is not None]
    lr, lr_low, lr_high = _lr_at_target(
        transfer["lr"], bounds, proxy_batch=proxy_batch, target_batch=target_batch,
        proxy_tokens=proxy_tokens, target_tokens=target_tokens, notes=notes)
    wd, wd_interval = _weight_decay_at_target(transfer.get("weight_decay"), zero, config,
                                              target_width, notes)
    if wd > 0 and (target_tokens is not None or target_batch is not None):
        notes.warnings.append("λ is not rescaled for a different horizon or batch (keeping "
                              "the AdamW timescale τ = 1/(ηλ) in epochs, Wang & Aitchison "
                              "2024, is future work)")
    if target_depth is not None and target_depth != config.spec.depth:
        notes.warnings.append(
            f"depth transfer is not supported by this parametrization: the proxies have depth "
            f"{config.spec.depth}, the target {target_depth}, and hptransfer has no depth "
            f"rule yet (Depth-µP / CompleteP, SPEC §4); the hparams are those for depth "
            f"{config.spec.depth}")

    hparams = HParams(**{**config.space.base.model_dump(), "lr": 2.0**lr, "weight_decay": wd,
                         "batch_size": target_batch or proxy_batch})
    intervals: dict[str, tuple[float, float]] = {"lr": (2.0**lr_low, 2.0**lr_high)}
    if wd_interval is not None:
        intervals["weight_decay"] = wd_interval
    if batch_interval is not None:
        intervals["batch_size"] = batch_interval
    tokens = target_tokens or proxy_tokens
    evidence = Evidence(widths=tuple(f.evidence for f in fits), fits=transfer,
                        searched=tuple(transfer), proxy_depth=config.spec.depth,
                        proxy_tokens=proxy_tokens, proxy_batch=proxy_batch,
                        bootstrap=bootstrap, seed=seed, band=band, window_octaves=window)
    return Prediction(study=study, target_width=target_width, target_depth=spec.depth,
                      target_tokens=tokens, spec=spec, hparams=hparams, intervals=intervals,
                      rules=tuple(notes.rules), warnings=tuple(notes.warnings),
                      evidence=evidence,
                      baselines=_baselines(records, fits, spec, tokens))


def _baselines(records: list[TrialRecord], fits: list[_WidthFit], spec: ModelSpec,
               tokens: int) -> dict[str, Baseline]:
    largest = max(f.evidence.width for f in fits)
    done = [r for r in records if r.width == largest and r.status is TrialStatus.COMPLETE
            and r.final_val_loss is not None and math.isfinite(r.final_val_loss)]
    best = min(done, key=lambda r: r.final_val_loss)
    sp_note = ("an SP fit: absolute per-step LR for every tensor and batch in tokens; not "
               "directly comparable to a µP base α (compare it with the hidden-matrix LR)")
    n = spec.parameter_count()  # non-embedding, readout included (as Step Law counts)
    a, alpha, beta = STEP_LAW["lr"]
    b, gamma = STEP_LAW["batch_tokens"]
    step_batch = b * tokens**gamma
    compute = spec.flops_per_token() * tokens  # DeepSeek's C = M·D, M = non-embedding FLOPs/token
    c, delta = DEEPSEEK["lr"]
    e, zeta = DEEPSEEK["batch_tokens"]
    deepseek_batch = e * compute**zeta
    return {
        "zero-shot": Baseline(
            lr=best.hparams.lr, batch_size=best.hparams.batch_size,
            weight_decay=best.hparams.weight_decay,
            note=f"zero-shot µTransfer: the best proxy trial of the largest width {largest} "
                 f"(trial {best.number}, loss {best.final_val_loss:.4f}) copied as is"),
        "step-law": Baseline(
            lr=a * n**alpha * tokens**beta, batch_tokens=step_batch,
            batch_size=max(1, round(step_batch / spec.seq_len)),
            note=f"Step Law (2025): η = 1.79·N^−0.713·D^0.307, B = 0.58·D^0.571 tokens, "
                 f"N = {n:,} non-embedding parameters, D = {tokens:,} tokens; {sp_note}"),
        "deepseek": Baseline(
            lr=c * compute**delta, batch_tokens=deepseek_batch,
            batch_size=max(1, round(deepseek_batch / spec.seq_len)),
            note=f"DeepSeek LLM (2024): η = 0.3118·C^−0.125, B = 0.292·C^0.327 tokens, "
                 f"C = M·D = {compute:.3g} FLOPs with M = {spec.flops_per_token():.3g} "
                 f"non-embedding training FLOPs per token (attention included) and "
                 f"D = {tokens:,}; {sp_note}"),
    }


def _missing_local_storage(url: str) -> str | None:
    """The path of a local SQLite or journal file that does not exist, else None (opening
    it would create an empty one)."""
    from hptransfer.storage import normalize, storage_kind

    url = normalize(url)
    if storage_kind(url) not in ("sqlite", "journal") or ":memory:" in url:
        return None
    path = Path(url.split(":///", 1)[1] if ":///" in url else url.split("://", 1)[1])
    return None if path.exists() else str(path)


def predict_hparams(target_width: int, *, study: str = "proxy", storage: Any = None,
                    target_depth: int | None = None, target_tokens: int | None = None,
                    target_batch: int | None = None, bootstrap: int = 1000,
                    seed: int = 0) -> Prediction:
    """Predict the hparams of a model of width ``target_width`` from study ``study``.

    ``storage`` is an Optuna storage or URL (None: ``$HPTRANSFER_HOME/studies.db``).
    ``target_tokens`` and ``target_batch`` (sequences) default to the proxies' own; the
    rules that move the LR for them are listed in ``Prediction.rules``. Raises
    :class:`PredictionError` when the study cannot support a prediction.

    >>> predict_hparams(1024, study="gone", storage="sqlite:///:memory:")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    hptransfer.transfer.PredictionError: no study named 'gone' in this storage ...
    """
    from hptransfer.storage import open_storage
    from hptransfer.study import load_config, load_trials

    if storage is None or isinstance(storage, str):
        missing = _missing_local_storage(storage)
        if missing is not None:
            raise PredictionError(f"no study {study!r}: there is no storage file at "
                                  f"{missing}; create the study with hptransfer tune "
                                  f"--study {study} --widths 32,64")
        storage = open_storage(storage)
    try:
        config = load_config(study, storage)
        records = load_trials(study, storage)
    except StudyError as error:
        raise PredictionError(str(error)) from None
    return predict_from_trials(records, config, target_width, study=study,
                               target_depth=target_depth, target_tokens=target_tokens,
                               target_batch=target_batch, bootstrap=bootstrap, seed=seed)

"""Coordinate check (docs/spec.md §6): are activation sizes flat in width during training?

Each width trains a few steps on the same fixed batches with a largish constant LR; before
each step (t = 1 is the initial model) the mean |activation| of every module type's output is
recorded. This is repeated for ``seeds`` seeds (each its own init and batches, the same at
every width; microsoft/mup's ``nseeds``). Pass/fail after microsoft/mup's numeric test: for
every module type and step, the growth per doubling of width, 2^slope of log2|activation|
against log2(width) (the slope averaged over the seeds), must lie within
[1/tolerance, tolerance], unless the seeds' spread leaves that in doubt: a slope fails only
when it lies outside the band by more than ``SIGMAS`` standard errors of the mean (so one
noisy seed does not fail a correct model, and a real growth, which every seed shows,
still fails). The theory's exceptions (:func:`~hptransfer.mup.rules.
logits_shrink_at_init`): under µP the logits at t = 1 shrink like 1/√M and are exempt, and
later logits need only not grow. The report's picture is drawn by :mod:`hptransfer.report`.

>>> report = coord_check(widths=(32, 64), steps=2, depth=1, seq_len=16, batch_size=2)
>>> report.widths, len(report.points) > 0
((32, 64), True)
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import torch
from pydantic import Field

from hptransfer import checks
from hptransfer.data.corpus import Corpus, load_corpus
from hptransfer.errors import ConfigError
from hptransfer.hparams import HParams
from hptransfer.models.registry import build_model, family_of, role_table
from hptransfer.mup.rules import alpha_for_base_lr, logits_shrink_at_init
from hptransfer.spec import FrozenConfig, ModelSpec, Parametrization
from hptransfer.training.device import autocast, resolve_threads
from hptransfer.training.loop import token_loss
from hptransfer.training.optimizer import build_optimizer

__all__ = ["DEFAULT_LR", "CoordCheckReport", "CoordPoint", "Growth", "coord_check"]

DEFAULT_TOLERANCE = checks.TOLERANCE
# The hidden matrices' LR at the base width; each parametrization's α follows from it
# (mup.rules.alpha_for_base_lr: ×M₀ under the absolute rule).
DEFAULT_LR = 2.0**-5


class CoordPoint(FrozenConfig):
    module: str
    step: int  # 1 = before the first update
    width: int
    mean_abs: float  # the mean over the seeds
    low: float | None = None  # the seeds' smallest and largest, for the picture's spread
    high: float | None = None


class Growth(FrozenConfig):
    module: str
    step: int
    per_doubling: float  # 2^slope of log2|act| vs log2(width), the slope averaged over seeds
    slope_se: float = 0.0  # standard error of that slope over the seeds (log2 units)
    exempt: bool
    ok: bool


class CoordCheckReport(FrozenConfig):
    param: Parametrization
    widths: tuple[int, ...]
    steps: int
    lr: float
    tolerance: float
    seeds: int = 1
    spec: ModelSpec = Field(description="spec of the first width (others differ in width)")
    points: tuple[CoordPoint, ...]
    growth: tuple[Growth, ...]
    passed: bool

    @property
    def failures(self) -> list[Growth]:
        return [g for g in self.growth if not g.ok]


def _record_width(spec: ModelSpec, hparams: HParams, batches: list[torch.Tensor], seed: int
                  ) -> dict[tuple[str, int], float]:
    model = build_model(spec, seed=seed)
    roles = role_table(spec)
    optimizer = build_optimizer(model, roles, spec, hparams)
    sums: dict[str, list[float]] = defaultdict(list)

    def hook(name: str):
        def record(_module, _inputs, output):
            # Hugging Face modules return tuples (output, attention weights, …)
            first = output[0] if isinstance(output, tuple) else output
            sums[name].append(first.detach().abs().mean().item())
        return record

    handles = [module.register_forward_hook(hook(name))
               for name, modules in family_of(spec).probes(model, roles).items()
               for module in modules]
    means: dict[tuple[str, int], float] = {}
    for t, batch in enumerate(batches, start=1):
        sums.clear()
        with autocast(spec):
            loss = token_loss(model, batch)
        for name, values in sums.items():
            means[(name, t)] = float(np.mean(values))  # averaged over blocks
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    for handle in handles:
        handle.remove()
    return means


def coord_check(*, widths: tuple[int, ...] = checks.WIDTHS,
                param: Parametrization | str = Parametrization.MUP, steps: int = checks.STEPS,
                lr: float | None = None, depth: int = checks.DEPTH,
                seq_len: int = checks.SEQ_LEN, batch_size: int = checks.BATCH_SIZE,
                tolerance: float = DEFAULT_TOLERANCE, seed: int = 0, seeds: int = checks.SEEDS,
                corpus: Corpus | None = None, threads: int | None = None,
                **spec_fields) -> CoordCheckReport:
    """Train each width ``steps`` steps, for seeds ``seed`` … ``seed + seeds − 1``, and judge
    whether activations stay flat in width.

    ``spec_fields`` are further :class:`ModelSpec` fields (head_dim, activation, …). The LR
    is constant (no warmup or decay) so every step moves the weights; ``lr`` None is
    :data:`DEFAULT_LR` for the hidden matrices at the base width.
    """
    if len(widths) < 2:
        raise ConfigError(f"a coord check needs at least two widths, got {list(widths)}")
    if not (math.isfinite(tolerance) and tolerance > 1):
        raise ConfigError(f"tolerance is the growth allowed per doubling of width, above 1, "
                          f"got {tolerance}")
    if seeds < 1:
        raise ConfigError(f"a coord check needs at least one seed, got {seeds}")
    torch.set_num_threads(resolve_threads(threads))
    corpus = corpus if corpus is not None else load_corpus()
    specs = [ModelSpec(width=w, depth=depth, seq_len=seq_len, param=param, **spec_fields)
             for w in widths]
    if lr is None:
        lr = alpha_for_base_lr(specs[0], DEFAULT_LR)
    if not lr > 0:
        raise ConfigError(f"the coord check LR must be positive, got {lr}")
    hparams = HParams(lr=lr, warmup_fraction=0.0, final_lr_fraction=1.0, grad_clip=0.0,
                      batch_size=batch_size)
    runs = []  # per seed: width → (module, t) → mean |activation|
    for s in range(seed, seed + seeds):
        rng = np.random.default_rng(s)
        batches = [torch.from_numpy(corpus.train_batch(rng, batch_size, seq_len))
                   for _ in range(steps)]
        runs.append({spec.width: _record_width(spec, hparams, batches, s) for spec in specs})

    keys = sorted(runs[0][widths[0]])
    # values[key] has one row per seed, one column per width
    values = {key: np.array([[run[w][key] for w in widths] for run in runs]) for key in keys}
    points = [CoordPoint(module=name, step=t, width=w, mean_abs=float(v[:, i].mean()),
                         low=float(v[:, i].min()), high=float(v[:, i].max()))
              for (name, t), v in values.items() for i, w in enumerate(widths)]
    exempt_logits = logits_shrink_at_init(specs[0])
    log_widths = np.log2(np.array(widths, dtype=float))
    growth = []
    for (name, t), v in values.items():
        slopes = np.array([np.polyfit(log_widths, np.log2(np.maximum(row, 1e-30)), 1)[0]
                           for row in v])
        slope = float(slopes.mean())
        se = float(slopes.std(ddof=1) / math.sqrt(len(slopes))) if len(slopes) > 1 else 0.0
        per_doubling = 2.0**slope
        exempt = exempt_logits and name == "logits" and t == 1
        # The network output keeps its 1/√M init part for a few steps after the first
        # (sign-like) Adam update, so early logits may shrink with width at small widths; a
        # parametrization error shows as growth. Hidden activations must be flat both ways.
        low = -math.inf if name == "logits" else -math.log2(tolerance)
        margin = checks.SIGMAS * se
        ok = exempt or (math.isfinite(slope) and low - margin <= slope
                        <= math.log2(tolerance) + margin)
        growth.append(Growth(module=name, step=t, per_doubling=per_doubling, slope_se=se,
                             exempt=exempt, ok=ok))
    return CoordCheckReport(param=specs[0].param, widths=tuple(widths), steps=steps, lr=lr,
                            tolerance=tolerance, seeds=seeds, spec=specs[0],
                            points=tuple(points), growth=tuple(growth),
                            passed=all(g.ok for g in growth))

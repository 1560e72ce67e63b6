"""How a width's trials are chosen: samplers, pruners, warm starts, and the width study.

Pruning and the LR optimum (docs/spec.md §8): every trial runs its own full schedule, and a
pruner compares a trial's validation loss at some token count with other trials' at the same
count. Early in a schedule large LRs look better than they end, so pruning early biases the
optimum upward: hptransfer's pruners never act before half the budget has run, and pruning
is off by default. Every trial of a width uses the study's seed, so LRs are compared on
paired runs (same init, same batches): the loss-vs-LR bowl is far smoother than with
independent seeds.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import TYPE_CHECKING

from hptransfer.errors import StudyError
from hptransfer.study.attributes import bind_config, is_warm_started, mark_warm_started
from hptransfer.study.config import StudyConfig
from hptransfer.study.lifecycle import enqueue
from hptransfer.study.names import width_study_name
from hptransfer.study.schema import Attr, TrialRecord, TrialStatus

if TYPE_CHECKING:
    import optuna

__all__ = ["Pruning", "SamplerKind", "WarmStart", "enqueue_warm_start", "grid_size",
           "grid_space", "make_pruner", "make_sampler", "open_width_study", "quiet_optuna",
           "warm_start_lrs"]


class SamplerKind(str, Enum):
    LADDER = "ladder"  # hptransfer's transfer-aware search (study/ladder.py): the default
    TPE = "tpe"  # Optuna 5 default: multivariate, constant liar
    GP = "gp"  # Gaussian process with log EI: strong for 2-4 continuous hparams
    CMAES = "cmaes"
    QMC = "qmc"  # quasi-random Sobol points
    GRID = "grid"  # the LR octaves (× batch sizes) only


class Pruning(str, Enum):
    NONE = "none"
    MEDIAN = "median"
    HYPERBAND = "hyperband"


class WarmStart(str, Enum):
    """Trials enqueued before the sampler runs."""

    NONE = "none"
    OCTAVES = "octaves"  # the LR octave grid, so every width has its bowl bracketed
    OCTAVES_AND_PREVIOUS = "octaves+previous"  # also the 3 best points of the previous width


def quiet_optuna() -> None:
    """hptransfer reports progress itself; Optuna's per-trial INFO lines would drown it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_sampler(kind: SamplerKind, config: StudyConfig, seed: int):
    import optuna

    if kind is SamplerKind.LADDER:
        # the ladder enqueues every trial it wants and its workers never ask the sampler
        # for a new one (ledger.claim_waiting); Optuna still needs one per study
        return optuna.samplers.RandomSampler(seed=seed)
    if kind is SamplerKind.TPE:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=5)
    if kind in (SamplerKind.GP, SamplerKind.QMC):
        try:
            import scipy  # noqa: F401  (optuna's GP fit and Sobol points use it)
        except ImportError:
            raise StudyError(f"--sampler {kind.value} needs the scipy package: "
                             "pip install scipy") from None
    if kind is SamplerKind.GP:
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    if kind is SamplerKind.CMAES:
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise StudyError("--sampler cmaes needs the cmaes package: "
                             "pip install cmaes") from None
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=5)
    if kind is SamplerKind.QMC:
        return optuna.samplers.QMCSampler(seed=seed)
    return _ask_tell_grid_sampler()(grid_space(config), seed=seed)


def grid_space(config: StudyConfig) -> dict[str, list]:
    """The grid of ``--sampler grid``: LR octaves × batch sizes."""
    if config.space.weight_decay is not None:
        raise StudyError("--sampler grid searches LR octaves and batch sizes only; "
                         "turn the weight-decay range off (--weight-decay-range off) or pick "
                         "another sampler")
    grid: dict[str, list] = {"lr": config.space.lr_octaves()}
    if config.space.batch_sizes is not None:
        grid["batch_size"] = list(config.space.batch_sizes)
    return grid


def grid_size(config: StudyConfig) -> int:
    size = 1
    for values in grid_space(config).values():
        size *= len(values)
    return size


def _ask_tell_grid_sampler():
    import optuna

    class AskTellGridSampler(optuna.samplers.GridSampler):
        """Optuna's GridSampler stops the study from ``after_trial`` once the grid is
        used up, which raises outside ``study.optimize``; hptransfer drives ask/tell and
        caps ``--trials`` at the grid size instead (see :func:`tune`)."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return AskTellGridSampler


def make_pruner(kind: Pruning, tokens: int):
    """Pruners see validation losses reported at *tokens seen*, so trials with different
    batch sizes are compared at equal data."""
    import optuna

    half = max(1, tokens // 2)  # the module docstring: never judge the first half
    if kind is Pruning.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=half)
    if kind is Pruning.HYPERBAND:
        return optuna.pruners.HyperbandPruner(min_resource=half, max_resource=tokens,
                                              reduction_factor=2)
    return optuna.pruners.NopPruner()


def open_width_study(name: str, width: int, config: StudyConfig, storage, *,
                     sampler: SamplerKind, pruning: Pruning) -> optuna.Study:
    """Load or create the Optuna study of one width; refuse a different config."""
    import optuna

    study = optuna.create_study(
        study_name=width_study_name(name, width), storage=storage, direction="minimize",
        load_if_exists=True, sampler=make_sampler(sampler, config, config.seed + width),
        pruner=make_pruner(pruning, config.tokens_per_trial()))
    bind_config(study, name, config)
    return study


def warm_start_lrs(config: StudyConfig) -> list[float]:
    """The LR grid two octaves apart, centre of the range first, then outwards.

    Centre-out so that a study with fewer trials than grid points still brackets the bowl
    (2^-8, 2^-6, 2^-10, 2^-4, … for the default range) instead of running only small LRs.
    """
    octaves = config.space.lr_octaves(step=2)
    if not octaves:
        return []
    middle = (math.log2(octaves[0]) + math.log2(octaves[-1])) / 2
    return sorted(octaves, key=lambda lr: (abs(math.log2(lr) - middle), lr))


def enqueue_warm_start(study: optuna.Study, config: StudyConfig, warm: WarmStart,
                       previous: list[TrialRecord]) -> None:
    """Enqueue the LR octave grid (and the previous width's best points), once per study."""
    if warm is WarmStart.NONE or is_warm_started(study):
        return
    for lr in warm_start_lrs(config):
        enqueue(study, config.space.grid_point(lr), **{Attr.GRID_POINT: True})
    if warm is WarmStart.OCTAVES_AND_PREVIOUS:
        done = sorted((t for t in previous if t.status is TrialStatus.COMPLETE),
                      key=lambda t: t.final_val_loss)
        for trial in done[:3]:
            params = config.space.grid_point(trial.hparams.lr)
            enqueue(study, params, **{Attr.FROM_WIDTH: trial.width})
    mark_warm_started(study)

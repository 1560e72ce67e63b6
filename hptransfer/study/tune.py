"""The tune: every width of a study in order, each until it holds enough finished trials.

:func:`tune` checks everything before any trial runs (config against the stored one,
corpus, sampler limits, the runner's own preconditions), enqueues each width's warm start,
and hands the width to a :class:`~hptransfer.study.runner.TrialRunner`:
:class:`~hptransfer.study.worker.LocalRunner`
(this machine, the default) or a backend's (:class:`hptransfer.backends.ray_tune.RayTune`).
Re-running the same call resumes: finished trials are kept, lost ones retried, and only the
missing trials run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from pydantic import Field

from hptransfer.errors import StudyError
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.attributes import check_existing, existing_config, ladder_done
from hptransfer.study.config import (
    DEFAULT_TRIALS,
    LADDER_TRIALS,
    PROXY_SPEC,
    StudyConfig,
    base_width,
    study_config,
)
from hptransfer.study.ladder import PRECISION, WidthSearch
from hptransfer.study.leases import lease_timing
from hptransfer.study.names import check_name
from hptransfer.study.records import WidthSummary, load_trials, summarize
from hptransfer.study.runner import TrialRunner, WidthJob
from hptransfer.study.schema import TrialRecord
from hptransfer.study.search import (
    Pruning,
    SamplerKind,
    WarmStart,
    enqueue_warm_start,
    grid_size,
    open_width_study,
    quiet_optuna,
)
from hptransfer.tracking import Tracking, ready, resolve

if TYPE_CHECKING:
    from hptransfer.data.corpus import Corpus
    from hptransfer.study.ladder import Ladder

__all__ = ["TuneResult", "tune"]


class TuneResult(FrozenConfig):
    """What ``tune`` leaves behind: where the record is, and each width's summary."""

    study: str
    storage: str
    widths: tuple[WidthSummary, ...]
    wall_time_s: float
    search: tuple[WidthSearch, ...] = Field(
        (), description="the ladder search: per width, the trials and FLOPs it spent and the "
                        "LR interval they bought (empty with an Optuna sampler)")

    def best(self, width: int) -> WidthSummary:
        for summary in self.widths:
            if summary.width == width:
                return summary
        raise KeyError(f"width {width} is not in study {self.study!r}")


def tune(config: StudyConfig | None = None, *, study: str = "proxy",
         widths: tuple[int, ...] = (128,), trials: int | None = None,
         storage: str | None = None, sampler: SamplerKind = SamplerKind.LADDER,
         pruning: Pruning = Pruning.NONE, warm_start: WarmStart | None = None,
         lr_precision: float = PRECISION, corpus: Corpus | None = None,
         runner: TrialRunner | None = None,
         on_trial: Callable[[TrialRecord], None] | None = None,
         tracking: Tracking | None = None) -> TuneResult:
    """Tune every width of ``widths``; re-running the same call resumes.

    With the default ``sampler=SamplerKind.LADDER`` (:mod:`hptransfer.study.ladder`) the
    widths are searched cheapest first, each steered by the narrower ones, and a width
    stops when its LR optimum's 95% interval is narrower than ``lr_precision`` octaves (scaled
    up for costlier widths, below) or at ``trials`` trials (default ``LADDER_TRIALS``).
    With an Optuna sampler each width runs until it holds ``trials`` finished trials
    (default ``DEFAULT_TRIALS``), starting with ``warm_start`` (default the LR octaves).

    ``config`` defaults to :func:`~hptransfer.study.config.study_config` (the built-in proxy
    setting and corpus), with the study's base width if it exists, else the narrowest of
    ``widths`` (:func:`~hptransfer.study.config.base_width`). ``runner`` defaults to one
    local process (:class:`~hptransfer.study.worker.LocalRunner`); ``on_trial`` gets each
    trial's record as it finishes. ``tracking`` logs every trial to experiment trackers
    (:mod:`hptransfer.tracking`; None: ``$HPTRANSFER_TRACKER``'s, if set), from the process
    that trains it; a tracker that cannot log is off, with one warning, and the tune goes on.
    """
    from hptransfer.data.corpus import check_hash, load_corpus
    from hptransfer.study.storage import normalize, open_storage
    from hptransfer.study.worker import LocalRunner

    quiet_optuna()
    check_name(study)
    lease_timing()  # a bad HPTRANSFER_GRACE_S is refused before anything is created
    started = time.perf_counter()
    url = normalize(storage)
    runner = runner or LocalRunner()
    if config is None:  # the built-in setting, based at the study's base or the narrowest
        config = study_config(corpus=corpus, spec=ModelSpec(**{
            **PROXY_SPEC, "base_width": base_width(widths, existing_config(study, url))}))
    ladder = sampler is SamplerKind.LADDER
    _check_sampler(config, sampler)
    if ladder:
        _check_ladder(config, pruning, warm_start, lr_precision)
        widths = tuple(sorted(set(widths), key=lambda w: config.spec_at(w).flops_per_token()))
    trials = trials if trials is not None else LADDER_TRIALS if ladder else DEFAULT_TRIALS
    warm_start = WarmStart.NONE if ladder else warm_start or WarmStart.OCTAVES
    corpus = corpus if corpus is not None else load_corpus(config.data)
    check_hash(corpus, config.corpus_hash)
    if sampler is SamplerKind.GRID and trials > grid_size(config):
        raise StudyError(f"--sampler grid has {grid_size(config)} points (LR octaves × batch "
                         f"sizes); ask for at most that many --trials or widen --lr-range")
    runner.prepare(url, pruning, sampler)  # e.g. the Ray install line, not a half-made study
    tracking = ready(tracking if tracking is not None else resolve())
    optuna_storage = open_storage(url)
    check_existing(study, config, optuna_storage)
    previous: list[TrialRecord] = []
    earlier: list[tuple[int, Ladder, list[TrialRecord]]] = []
    searches: list[WidthSearch] = []
    for width in widths:
        width_study = open_width_study(study, width, config, optuna_storage, sampler=sampler,
                                       pruning=pruning)
        enqueue_warm_start(width_study, config, warm_start, previous)
        planner = _ladder(config, width, earlier, trials, lr_precision) if ladder else None
        runner.run_width(WidthJob(study=width_study, name=study, width=width, config=config,
                                  storage_url=url, trials=trials, sampler=sampler,
                                  pruning=pruning, corpus=corpus, on_trial=on_trial,
                                  ladder=planner, tracking=tracking))
        previous = load_trials(study, optuna_storage, [width])
        if planner is not None:
            earlier.append((width, planner, previous))
            searches.append(planner.summary(previous, ladder_done(width_study)))
    summaries = summarize(load_trials(study, optuna_storage, list(widths)))
    return TuneResult(study=study, storage=url, widths=tuple(summaries),
                      wall_time_s=time.perf_counter() - started, search=tuple(searches))


def _check_sampler(config: StudyConfig, sampler: SamplerKind) -> None:
    if sampler is not SamplerKind.LADDER and config.space.multipliers is not None:
        raise StudyError("the per-module multipliers are tuned by the ladder's multipliers "
                         "step, which an Optuna sampler does not run: use --sampler ladder, "
                         "or leave --multiplier-range off")


def _check_ladder(config: StudyConfig, pruning: Pruning, warm_start: WarmStart | None,
                  precision: float) -> None:
    if config.space.lr is None:
        raise StudyError("the ladder search steers by the LR optimum, and this study fixes "
                         "the LR: give an --lr-range, or pick an Optuna --sampler")
    if pruning is not Pruning.NONE:
        raise StudyError("--pruner stops trials early, and each of the ladder's few trials "
                         "is needed whole: use --pruner none, or an Optuna --sampler")
    if warm_start not in (None, WarmStart.NONE):
        raise StudyError("--warm-start enqueues points for an Optuna sampler; the ladder "
                         "chooses its own first points: leave --warm-start out")
    if not precision > 0:
        raise StudyError(f"lr_precision (--lr-precision) is the width in octaves of the LR "
                         f"interval at which a width stops, a positive number; got "
                         f"{precision}")


def _ladder(config: StudyConfig, width: int, earlier, trials: int, precision: float) -> Ladder:
    """The planner of ``width``: its prior from the widths before it, and its precision.

    A costlier width is allowed a wider interval: the target's prediction weighs each
    width's optimum by its precision, and buying precision costs trials × FLOPs per trial,
    so the cheapest total for a given target interval gives width w an interval
    ∝ cost_w^¼ (each width's variance falls as 1/trials; Neyman allocation).
    """
    from hptransfer.study.ladder import Ladder, prior_from

    if not earlier:
        return Ladder(config, width, prior=None, max_trials=trials, precision=precision)
    cost = config.spec_at(width).flops_per_token() / config.spec_at(earlier[0][0]) \
        .flops_per_token()
    return Ladder(config, width, prior=prior_from(config, width, earlier), max_trials=trials,
                  precision=precision * cost**0.25)

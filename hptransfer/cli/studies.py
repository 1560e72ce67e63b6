"""Commands about studies: ``tune``, ``worker``, ``status``, ``plot``.

A config file (TOML or YAML, :class:`~hptransfer.study.config.ConfigFile`) may hold the
sections ``[tune]`` (the options below), ``[spec]``, ``[hparams]``, ``[space]`` and
``[budget]``; flags given on the command line win.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Literal

import click
from pydantic import Field, ValidationError, model_validator

from hptransfer.backends import Backend
from hptransfer.backends.ray_tune import RayOptions, Scheduler
from hptransfer.cli.app import main
from hptransfer.cli.options import (
    address_option,
    batch_sizes_option,
    check_out,
    config_options,
    data_option,
    explain,
    fail,
    range_option,
    storage_option,
    threads_option,
    tracker_options,
    tracking_of,
    widths_option,
    workers_option,
)
from hptransfer.data.source import DataSource
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.config import (
    BASE_WIDTH_HELP,
    DEFAULT_TRIALS,
    LADDER_TRIALS,
    PROXY_BUDGET,
    PROXY_SPEC,
)
from hptransfer.study.ladder import PRECISION
from hptransfer.study.names import check_name
from hptransfer.study.runner import AUTO
from hptransfer.study.search import Pruning, SamplerKind, WarmStart
from hptransfer.tracking.tracker import TrackerKind

__all__ = ["TrialProgress", "TuneOptions", "print_search"]


class TuneOptions(FrozenConfig):
    """The ``[tune]`` section of a config file, and the flags that override it: the request
    the ``tune`` command makes of :func:`hptransfer.study.tune.tune`."""

    study: str = "proxy"  # checked by study.ledger.check_name
    widths: tuple[int, ...] = Field((128,), min_length=1)
    trials: int | None = Field(None, ge=1)  # None: the sampler's (tune's own default)
    storage: str | None = None
    sampler: SamplerKind = SamplerKind.LADDER
    pruner: Pruning = Pruning.NONE
    workers: int | Literal["auto"] = AUTO
    lr_precision: float = Field(PRECISION, gt=0)
    seed: int = 0
    warm_start: WarmStart | None = None  # None: the sampler's (tune's own default)
    data: DataSource | None = None  # a path, or a table {path, tokenizer, ...}
    backend: Backend = Backend.LOCAL
    # --backend ray only (hptransfer.backends.ray_tune.RayOptions)
    address: str | None = None
    cpus_per_trial: int = Field(1, ge=1)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    concurrent: int | None = Field(None, ge=1)
    scheduler: Scheduler = Scheduler.FIFO
    max_failures: int = Field(2, ge=0)
    # experiment trackers (hptransfer.tracking): not part of the study config, which every
    # trial shares and a resume must match; a tracker may be added or dropped on any run
    tracker: tuple[TrackerKind, ...] | None = None  # None: $HPTRANSFER_TRACKER's
    tracker_dir: str | None = None

    @model_validator(mode="after")
    def _flags_fit_the_backend(self) -> TuneOptions:
        if self.backend is Backend.TORCHRUN:
            raise ValueError("backend torchrun is for confirmation runs (hptransfer confirm "
                             "--backend torchrun); tune trials run locally or on Ray")
        if self.backend is Backend.LOCAL:
            given = [f"--{name.replace('_', '-')}" for name in RayOptions.model_fields
                     if name in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)} apply only with --backend ray")
        elif "workers" in self.model_fields_set:
            raise ValueError("--workers starts local worker processes; on Ray, trials run as "
                             "the cluster's resources allow (limit them with --concurrent)")
        if isinstance(self.workers, int) and self.workers < 1:
            raise ValueError(f"workers must be a positive number or 'auto', got "
                             f"{self.workers}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"widths must be positive, got {list(self.widths)}")
        return self

    def runner(self, threads: int | None):
        """The :class:`~hptransfer.study.tune.TrialRunner` these options ask for."""
        if self.backend is Backend.RAY:
            from hptransfer.backends.ray_tune import RayTune

            return RayTune(RayOptions(address=self.address, cpus_per_trial=self.cpus_per_trial,
                                      gpus_per_trial=self.gpus_per_trial,
                                      concurrent=self.concurrent, scheduler=self.scheduler,
                                      max_failures=self.max_failures))
        from hptransfer.study.worker import LocalRunner

        return LocalRunner(workers=self.workers, threads=threads)


@main.command()
@click.option("--proxy-width", type=click.IntRange(min=1), default=None,
              help="tune one proxy width (same as --widths W)")
@click.option("--widths", default=None, callback=widths_option(),
              help="comma-separated proxy widths, tuned in order [default: 128]")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help=f"the ladder: at most this many trials per width (it stops a width "
                   f"earlier once its LR optimum is pinned) [default: {LADDER_TRIALS}]; an "
                   f"Optuna sampler: finished trials wanted per width, and running the "
                   f"command again tops the study up [default: {DEFAULT_TRIALS}]")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help=f"training steps per trial at the base batch size; with batch size "
                   f"searched, the budget is the same number of tokens "
                   f"[default: {PROXY_BUDGET['steps']}]")
@click.option("--study", "study_name", default=None, help="study name [default: proxy]")
@storage_option()
@click.option("--sampler", type=click.Choice([s.value for s in SamplerKind]), default=None,
              help=f"search algorithm: the ladder (widths cheapest first, each steered by the "
                   f"ones before; docs/tuning.md) or an Optuna sampler "
                   f"[default: {SamplerKind.LADDER.value}]")
@click.option("--lr-precision", type=click.FloatRange(min=0, min_open=True), default=None,
              help=f"the ladder: stop a width when its LR optimum's 95% interval is this many "
                   f"octaves wide (wider for costlier widths) [default: {PRECISION}]")
@click.option("--pruner", type=click.Choice([p.value for p in Pruning]), default=None,
              help="stop poor trials early, never before half the budget [default: none]")
@click.option("--workers", default=None, callback=workers_option,
              help="processes on this machine sharing each width, or 'auto': one thread per "
                   "trial and as many side by side as the CPUs allow at proxy widths "
                   "[default: auto]")
@click.option("--backend", type=click.Choice([Backend.LOCAL.value, Backend.RAY.value]),
              default=None,
              help="where trials run: this machine, or a Ray cluster (pip install "
                   "\"hptransfer[ray]\"; docs/ray.md) [default: local]")
@address_option
@click.option("--cpus-per-trial", type=click.IntRange(min=1), default=None,
              help="--backend ray: CPUs (= training threads) per trial [default: 1]")
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=None,
              help="--backend ray: GPUs per trial; a fraction shares a card [default: 0]")
@click.option("--concurrent", type=click.IntRange(min=1), default=None,
              help="--backend ray: trials at once [default: as the resources allow]")
@click.option("--scheduler", type=click.Choice([s.value for s in Scheduler]), default=None,
              help="--backend ray: fifo, or asha (never before half the budget) "
                   "[default: fifo]")
@click.option("--max-failures", type=click.IntRange(min=0), default=None,
              help="--backend ray: retries of a trial whose worker died [default: 2]")
@click.option("--seed", type=int, default=None, help="init, data and sampler seed [default: 0]")
@click.option("--warm-start", type=click.Choice([w.value for w in WarmStart]), default=None,
              help="an Optuna sampler: trials enqueued first [default: octaves, the LR grid 2 "
                   "octaves apart]")
@click.option("--lr-range", default=None, callback=range_option,
              help="LOW,HIGH of the log-uniform base LR [default: 2^-12,2^-2]")
@click.option("--weight-decay-range", default=None, callback=range_option,
              help="LOW,HIGH of the log-uniform λ (0 is also tried), or 'off' "
                   "[default: 1e-5,0.1]")
@click.option("--batch-sizes", default=None, callback=batch_sizes_option,
              help="comma-separated powers of two, or 'off' [default: 8,16,32]")
@click.option("--multiplier-range", default=None, callback=range_option,
              help="LOW,HIGH of each per-module multiplier (the embedding's LR, the "
                   "readout's output multiplier), tuned by the ladder on the narrowest width "
                   "and held at every width, e.g. 2^-4,2^4; or 'off' [default: off]")
@config_options(ModelSpec, exclude=("width",),
                defaults={**PROXY_SPEC, "base_width": BASE_WIDTH_HELP})
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="TOML or YAML file with [tune], [spec], [hparams], [space], [budget]")
@data_option
@threads_option
@tracker_options
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def tune(proxy_width, widths, trials, steps, study_name, storage, sampler, lr_precision, pruner,
         workers, backend, address, cpus_per_trial, gpus_per_trial, concurrent, scheduler,
         max_failures, seed, warm_start, lr_range, weight_decay_range, batch_sizes,
         multiplier_range, config_path, data, threads, trackers, tracker_dir, as_json,
         **spec_values) -> None:
    """Tune lr, weight decay and batch size of µP proxies, recorded in an Optuna storage.

    With no flag: width 128, depth 4, seq 128, trials of 150 steps on the built-in corpus,
    chosen by the ladder search (the LR bowl first, a second seed, then weight decay and
    batch; docs/tuning.md). Widths run cheapest first, each steered by the ones before.
    Running the same command again resumes the study.
    """
    from hptransfer.data.corpus import load_corpus
    from hptransfer.study.attributes import existing_config
    from hptransfer.study.config import ConfigFile, from_sources
    from hptransfer.study.tune import tune as run_tune

    file = ConfigFile.read(config_path) if config_path else ConfigFile()
    file.check_tune(config_path, tuple(TuneOptions.model_fields))
    if proxy_width is not None and widths is not None:
        fail("give --proxy-width or --widths, not both")
    flags = dict(study=study_name, storage=storage, sampler=sampler, pruner=pruner,
                 workers=workers, lr_precision=lr_precision, seed=seed, warm_start=warm_start,
                 data=data, trials=trials,
                 backend=backend, address=address, cpus_per_trial=cpus_per_trial,
                 gpus_per_trial=gpus_per_trial, concurrent=concurrent, scheduler=scheduler,
                 max_failures=max_failures, tracker=trackers or None, tracker_dir=tracker_dir,
                 widths=(proxy_width,) if proxy_width is not None else widths)
    try:
        opts = TuneOptions(**{**file.tune, **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as error:
        fail(f"{explain(error)}" + (f" (in --config {config_path} [tune] or the flags)"
                                     if config_path else ""))
    check_name(opts.study)
    tracking = tracking_of(opts.tracker, opts.tracker_dir)  # a bad $HPTRANSFER_TRACKER: exit 2
    if opts.data is not None:  # workers started elsewhere must find the same files
        opts = opts.model_copy(update={"data": opts.data.resolved()})
    try:  # every width and section is valid before the corpus is read or anything runs
        template = from_sources(file, widths=opts.widths, spec=spec_values, steps=steps,
                                space={"lr": lr_range, "weight_decay": weight_decay_range,
                                       "batch_sizes": batch_sizes,
                                       "multipliers": multiplier_range},
                                stored=existing_config(opts.study, opts.storage))
    except ValidationError as error:
        fail(explain(error))
    corpus = load_corpus(opts.data)
    config = template.config(corpus, seed=opts.seed, data=opts.data)
    runner = opts.runner(threads)
    ladder = opts.sampler is SamplerKind.LADDER
    # the ladder stops each width when it is pinned: its total is not known in advance
    progress = TrialProgress(None if ladder else len(opts.widths) * (opts.trials or
                                                                     DEFAULT_TRIALS),
                             quiet=as_json)
    if not as_json and hasattr(runner, "placement"):
        for width in opts.widths:
            click.echo(f"width {width}: {runner.placement(width).describe()}", err=True)
    try:
        result = run_tune(config, study=opts.study, widths=opts.widths, trials=opts.trials,
                          storage=opts.storage, sampler=opts.sampler, pruning=opts.pruner,
                          warm_start=opts.warm_start, lr_precision=opts.lr_precision, corpus=corpus,
                          runner=runner, on_trial=progress.update, tracking=tracking)
    finally:
        progress.close()
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    _print_summary(opts.study, result.storage, list(result.widths))
    if result.search:
        print_search(result.search)
    click.echo(f"{result.wall_time_s:.0f} s. Resume or top up: run the same command again. "
               f"Plot: hptransfer plot --study {opts.study}"
               + ("" if opts.storage is None else f" --storage {result.storage}"))


def print_search(search) -> None:
    """What the ladder spent per width, and the LR interval it bought."""
    click.echo("ladder search (compute spent → LR interval bought):")
    for w in search:
        low, high = (math.log2(v) for v in w.interval)
        noise = "" if w.noise is None else f", seed noise {100 * w.noise:.2f}%"
        click.echo(f"  width {w.width:>5}: {w.trials:>2} trials, {w.flops:.3g} FLOPs → lr "
                   f"2^{math.log2(w.lr):.2f}, 95% interval 2^{low:.2f} … 2^{high:.2f} "
                   f"({high - low:.2f} octaves{noise}); {w.stopped}")


class TrialProgress:
    """A rich progress bar: trials done, best loss so far, elapsed and ETA (on stderr);
    ``total`` None: trials done and elapsed only (the ladder decides when a width stops)."""

    def __init__(self, total: int | None, *, quiet: bool) -> None:
        self._bar = None
        self._best = math.inf
        self._started = False
        if quiet:
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(TextColumn("trials"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[best]}"), TimeElapsedColumn(),
                             TextColumn("ETA"), TimeRemainingColumn(),
                             console=Console(stderr=True), transient=False)
        self._task = self._bar.add_task("tune", total=total, best="best —")

    def update(self, trial) -> None:
        if self._bar is None:
            return
        if not self._started:  # only once work is under way: errors print on a clean line
            self._bar.start()
            self._started = True
        loss = trial.completed_loss
        if loss is not None:
            self._best = min(self._best, loss)
        best = "best —" if math.isinf(self._best) else f"best {self._best:.4f}"
        self._bar.update(self._task, advance=1, best=f"{best} · last: w{trial.width} "
                                                     f"#{trial.number} {trial.status.value}")

    def close(self) -> None:
        if self._bar is not None and self._started:
            self._bar.stop()
            self._started = False


def _print_summary(name: str, storage: str, summaries) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {name} — {storage}")
    for column in ("width", "finished", "complete", "diverged", "pruned", "best loss",
                   "lr", "weight decay", "batch", "FLOPs", "time"):
        table.add_column(column, justify="right")
    for s in summaries:
        h = s.best_hparams
        table.add_row(str(s.width), str(s.finished), str(s.complete), str(s.diverged),
                      str(s.pruned), "—" if s.best_loss is None else f"{s.best_loss:.4f}",
                      "—" if h is None else f"{h.lr:.4g} (2^{math.log2(h.lr):.1f})",
                      "—" if h is None else f"{h.weight_decay:.3g}",
                      "—" if h is None else str(h.batch_size), f"{s.flops:.3g}",
                      f"{s.wall_time_s:.0f} s")
    # rich wraps at 80 columns when stdout is not a terminal (CI logs, pipes): widen it
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@main.command()
@click.option("--study", "study_name", required=True, help="study to join")
@storage_option(required=True)
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="width to work on [default: each width of the study in turn]")
@click.option("--trials", type=click.IntRange(min=1), required=True,
              help="finished trials wanted per width")
@click.option("--sampler", type=click.Choice([s.value for s in SamplerKind]), default="tpe",
              show_default=True, help="search algorithm; give the one the study's tune used")
@click.option("--pruner", type=click.Choice([p.value for p in Pruning]), default="none",
              show_default=True, help="stop poor trials early, never before half the budget")
@threads_option
@tracker_options
@click.option("--quiet", is_flag=True, help="no progress output")
def worker(study_name, storage, width, trials, sampler, pruner, threads, trackers, tracker_dir,
           quiet) -> None:
    """Join a study from this or another machine: run its trials until it has enough.

    The study's spec, budget, search space and corpus come from the storage itself.
    """
    from hptransfer.data.corpus import check_hash, load_corpus
    from hptransfer.study.attributes import load_config, widths_of
    from hptransfer.study.config import check_roles
    from hptransfer.study.storage import Access, open_storage
    from hptransfer.study.worker import run_worker
    from hptransfer.tracking import ready
    from hptransfer.training.device import resolve_threads

    tracking = tracking_of(trackers, tracker_dir)
    optuna_storage = open_storage(storage, Access.UPDATE)
    config = load_config(study_name, optuna_storage)
    widths = widths_of(study_name, optuna_storage)
    if width is not None and width not in widths:
        fail(f"study {study_name!r} has widths {', '.join(map(str, widths))}, not {width}: a "
             f"worker joins a width the study has; add one with hptransfer tune --study "
             f"{study_name} --widths {','.join(map(str, [*widths, width]))}")
    widths = [width] if width is not None else widths
    corpus = load_corpus(config.data)
    check_hash(corpus, config.corpus_hash)
    check_roles(study_name, config)
    tracking = ready(tracking)  # one warning for a tracker that cannot log, then none
    progress = TrialProgress(len(widths) * trials, quiet=quiet)
    try:
        for w in widths:
            run_worker(study_name, w, config, optuna_storage, corpus, trials=trials,
                       sampler=SamplerKind(sampler), pruning=Pruning(pruner),
                       threads=resolve_threads(threads), on_trial=progress.update,
                       tracking=tracking)
    except KeyboardInterrupt:
        if quiet:  # a tune's own worker process: the tune says how to resume, once
            sys.exit(130)
        raise
    finally:
        progress.close()


@main.command()
@click.option("--study", "study_name", default=None, help="study [default: list all studies]")
@storage_option()
@click.option("--json", "as_json", is_flag=True, help="print the summaries as JSON")
def status(study_name, storage, as_json) -> None:
    """Summarise a study: per width, trials by status, the best trial and the compute used."""
    from hptransfer.study.attributes import study_names
    from hptransfer.study.records import live_runs, load_trials, summarize
    from hptransfer.study.schema import TrialStatus
    from hptransfer.study.storage import Access, missing_local_file, normalize, open_storage

    if storage is None and study_name is None and missing_local_file(None) is not None:
        # nothing recorded in the default storage yet: say so, without creating the file (a
        # --storage that names no file is an error: a mistyped path is not an empty study)
        click.echo("{}" if as_json else "no studies yet: hptransfer tune --proxy-width 128")
        return
    optuna_storage = open_storage(storage, Access.READ)
    if study_name is None:
        names = study_names(optuna_storage)
        if as_json:
            click.echo(json.dumps(names, indent=2))
        else:
            for name, widths in names.items():
                click.echo(f"{name}: widths {', '.join(map(str, widths))}")
            if not names:
                click.echo("no studies yet: hptransfer tune --proxy-width 128")
        return
    records = load_trials(study_name, optuna_storage)
    summaries = summarize(records)
    running = sum(1 for r in records if r.status in (TrialStatus.RUNNING, TrialStatus.WAITING))
    live = live_runs(study_name, optuna_storage)
    if as_json:
        click.echo(json.dumps({"study": study_name, "running_or_waiting": running,
                               "widths": [s.model_dump(mode="json") for s in summaries],
                               "live": [run.model_dump(mode="json") for run in live]},
                              indent=2))
        return
    _print_summary(study_name, normalize(storage), summaries)
    if running:
        click.echo(f"{running} trial(s) running or waiting")
    for run in live:
        click.echo(_live_line(run))


def _live_line(run) -> str:
    """One running trial: where its validation curve is now."""
    what = f"{run.study} trial {run.number}" + (
        "" if run.offset is None else f" (offset {run.offset:+g})")
    if not run.points:
        return f"running: {what}, no validation point yet"
    tokens, loss = run.points[-1]
    of = "" if not run.tokens_planned else (
        f" of {run.tokens_planned:,} ({100 * tokens / run.tokens_planned:.0f}%)")
    return (f"running: {what}, val loss {loss:.4f} at {tokens:,} tokens{of}; "
            f"{len(run.points)} point(s) so far")


@main.command()
@click.option("--study", "study_name", required=True, help="study to plot")
@storage_option()
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="folder for the PNG and the HTML report")
def plot(study_name, storage, out) -> None:
    """Write the µTransfer picture: validation loss vs LR, one curve per width."""
    from hptransfer.report.study_report import write_plot_page
    from hptransfer.study.records import load_trials, summarize
    from hptransfer.study.storage import Access, open_storage

    check_out(out, folder=True)
    records = load_trials(study_name, open_storage(storage, Access.READ))
    png, page = write_plot_page(study_name, records, summarize(records), out)
    click.echo(f"plot: {png}\npage: {page}")

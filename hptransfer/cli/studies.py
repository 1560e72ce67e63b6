"""Commands about studies: ``tune``, ``worker``, ``status``, ``plot``.

A config file (TOML or YAML) may hold any of the sections ``[tune]`` (the options below),
``[spec]`` (ModelSpec fields), ``[hparams]`` (fixed HParams fields), ``[space]`` (``lr``,
``weight_decay``, ``batch_sizes``) and ``[budget]``; flags given on the command line win.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import Field, ValidationError, field_validator, model_validator

from hptransfer.backends.cluster import Backend
from hptransfer.backends.ray_tune import RayOptions, Scheduler
from hptransfer.budget import Budget
from hptransfer.cli.app import main
from hptransfer.cli.options import (
    address_option,
    build,
    config_options,
    data_option,
    explain,
    fail,
    load_corpus_or_fail,
    threads_option,
)
from hptransfer.hparams import HParams
from hptransfer.space import SearchSpace
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.study.tune import (
    DEFAULT_TRIALS,
    PROXY_BUDGET,
    PROXY_HPARAMS,
    PROXY_SPACE,
    PROXY_SPEC,
    Pruning,
    SamplerKind,
    WarmStart,
)


class TuneOptions(FrozenConfig):
    """The ``[tune]`` section of a config file, and the flags that override it."""

    study: str = Field("proxy", min_length=1)
    widths: tuple[int, ...] = Field((128,), min_length=1)
    trials: int = Field(DEFAULT_TRIALS, ge=1)
    storage: str | None = None
    sampler: SamplerKind = SamplerKind.TPE
    pruner: Pruning = Pruning.NONE
    workers: int = Field(1, ge=1)
    seed: int = 0
    warm_start: WarmStart = WarmStart.OCTAVES
    data: str | None = None
    backend: Backend = Backend.LOCAL
    # --backend ray only (hptransfer.backends.ray_tune.RayOptions)
    address: str | None = None
    cpus_per_trial: int = Field(1, ge=1)
    gpus_per_trial: float = Field(0.0, ge=0.0)
    concurrent: int | None = Field(None, ge=1)
    scheduler: Scheduler = Scheduler.FIFO
    max_failures: int = Field(2, ge=0)

    @model_validator(mode="after")
    def _ray_flags_need_ray(self) -> TuneOptions:
        if self.backend is Backend.LOCAL:
            given = [f"--{name.replace('_', '-')}" for name in RayOptions.model_fields
                     if name in self.model_fields_set]
            if given:
                raise ValueError(f"{', '.join(given)} apply only with --backend ray")
        return self

    def ray_options(self) -> RayOptions:
        return RayOptions(address=self.address, cpus_per_trial=self.cpus_per_trial,
                          gpus_per_trial=self.gpus_per_trial, concurrent=self.concurrent,
                          scheduler=self.scheduler, max_failures=self.max_failures)

    @field_validator("widths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return value.split(",") if isinstance(value, str) else value

    @field_validator("widths")
    @classmethod
    def _positive(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in value):
            raise ValueError(f"widths must be positive, got {list(value)}")
        return value


class TuneFile(FrozenConfig):
    """The layout of a ``--config`` file; each section is validated by its own model."""

    tune: dict[str, Any] = Field(default_factory=dict)
    spec: dict[str, Any] = Field(default_factory=dict)
    hparams: dict[str, Any] = Field(default_factory=dict)
    space: dict[str, Any] = Field(default_factory=dict)
    budget: dict[str, Any] = Field(default_factory=dict)


def _read_config(path: str | None) -> TuneFile:
    if path is None:
        return TuneFile()
    file = Path(path)
    if not file.is_file():
        fail(f"--config: {path} is not a file")
    text = file.read_text()
    try:
        if file.suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif file.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ModuleNotFoundError:
                fail("--config: YAML files need PyYAML: pip install pyyaml (or use TOML)")
            data = yaml.safe_load(text) or {}
        else:
            fail(f"--config: {path} must end in .toml, .yaml or .yml")
    except Exception as error:  # a parse error: say where
        fail(f"--config: cannot parse {path}: {error}")
    try:
        tune_file = TuneFile(**data)
    except ValidationError as error:
        fail(f"--config {path}: {explain(error)} (sections: tune, spec, hparams, space, "
             f"budget)")
    # build() keeps only a model's own fields, so a misspelt key would be silently ignored
    known = {"spec": ModelSpec.model_fields, "hparams": HParams.model_fields,
             "space": ("lr", "weight_decay", "batch_sizes"), "budget": Budget.model_fields}
    for section, fields in known.items():
        unknown = sorted(set(getattr(tune_file, section)) - set(fields))
        if unknown:
            fail(f"--config {path} [{section}]: unknown key(s) {unknown} "
                 f"(known: {', '.join(fields)})")
    return tune_file


def _number_list(text: str, kind=float) -> tuple:
    try:
        from hptransfer.cli.options import NUMBER

        return tuple(kind(NUMBER.convert(v, None, None)) for v in text.split(",") if v.strip())
    except (click.BadParameter, ValueError):
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def _range_option(text: str | None):
    if text is None or text.lower() in ("off", "none", "fixed"):
        return text
    values = _number_list(text)
    if len(values) != 2:
        raise click.BadParameter(f"give LOW,HIGH (e.g. 2^-12,2^-2), got {text!r}")
    return values


@main.command()
@click.option("--proxy-width", type=click.IntRange(min=1), default=None,
              help="tune one proxy width (same as --widths W)")
@click.option("--widths", default=None, help="comma-separated proxy widths, tuned in order")
@click.option("--trials", type=click.IntRange(min=1), default=None,
              help=f"finished trials wanted per width; running the command again tops the "
                   f"study up to this number [default: {DEFAULT_TRIALS}]")
@click.option("--steps", type=click.IntRange(min=1), default=None,
              help=f"training steps per trial at the base batch size; with batch size "
                   f"searched, the budget is the same number of tokens "
                   f"[default: {PROXY_BUDGET['steps']}]")
@click.option("--study", "study_name", default=None, help="study name [default: proxy]")
@click.option("--storage", default=None,
              help="Optuna storage URL or file (.db SQLite, .log journal) "
                   "[default: $HPTRANSFER_HOME/studies.db]")
@click.option("--sampler", type=click.Choice([s.value for s in SamplerKind]), default=None,
              help="search algorithm [default: tpe]")
@click.option("--pruner", type=click.Choice([p.value for p in Pruning]), default=None,
              help="stop poor trials early, never before half the budget [default: none]")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="processes on this machine sharing each width [default: 1]")
@click.option("--backend", type=click.Choice([b.value for b in Backend]), default=None,
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
              help="trials enqueued first [default: octaves, the LR grid 2 octaves apart]")
@click.option("--lr-range", default=None, callback=lambda c, p, v: _range_option(v),
              help="LOW,HIGH of the log-uniform base LR [default: 2^-12,2^-2]")
@click.option("--weight-decay-range", default=None,
              callback=lambda c, p, v: _range_option(v),
              help="LOW,HIGH of the log-uniform λ (0 is also tried), or 'off' "
                   "[default: 1e-5,0.1]")
@click.option("--batch-sizes", default=None,
              help="comma-separated powers of two, or 'off' [default: 8,16,32]")
@config_options(ModelSpec, exclude=("width",))
@click.option("--config", "config_path", type=click.Path(), default=None,
              help="TOML or YAML file with [tune], [spec], [hparams], [space], [budget]")
@data_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
def tune(proxy_width, widths, trials, steps, study_name, storage, sampler, pruner, workers,
         backend, address, cpus_per_trial, gpus_per_trial, concurrent, scheduler, max_failures,
         seed, warm_start, lr_range, weight_decay_range, batch_sizes, config_path, data,
         threads, as_json, **spec_values) -> None:
    """Tune lr, weight decay and batch size of µP proxies, recorded in an Optuna storage.

    With no flag: width 128, depth 4, seq 128, 8 trials of 150 steps on the built-in corpus,
    about 7 minutes on 2 cores. Running the same command again resumes the study.
    """
    from hptransfer.study.ledger import StudyError
    from hptransfer.study.tune import study_config
    from hptransfer.study.tune import tune as run_tune

    file = _read_config(config_path)
    if proxy_width is not None and widths is not None:
        fail("give --proxy-width or --widths, not both")
    flags = dict(study=study_name, storage=storage, sampler=sampler, pruner=pruner,
                 workers=workers, seed=seed, warm_start=warm_start, data=data, trials=trials,
                 backend=backend, address=address, cpus_per_trial=cpus_per_trial,
                 gpus_per_trial=gpus_per_trial, concurrent=concurrent, scheduler=scheduler,
                 max_failures=max_failures,
                 widths=(proxy_width,) if proxy_width is not None else widths)
    try:
        opts = TuneOptions(**{**file.tune, **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as error:
        fail(f"{explain(error)}" + (f" (in --config {config_path} [tune] or the flags)"
                                     if config_path else ""))
    if opts.data is not None:  # workers started elsewhere must find the same file
        opts = opts.model_copy(update={"data": str(Path(opts.data).expanduser().resolve())})
    width_list = opts.widths

    spec = build(ModelSpec, {**PROXY_SPEC, **file.spec, "width": width_list[0],
                             **{k: v for k, v in spec_values.items() if v is not None}})
    for width in width_list:  # every width must be valid before anything runs
        build(ModelSpec, {**spec.model_dump(), "width": width})
    base = build(HParams, {**PROXY_HPARAMS, **file.hparams})
    # a config file turns a range off with "off" (TOML has no null)
    space_values = {**PROXY_SPACE, **{k: None if v == "off" else v
                                      for k, v in file.space.items()}}
    if lr_range is not None:
        space_values["lr"] = None if isinstance(lr_range, str) else lr_range
    if weight_decay_range is not None:
        space_values["weight_decay"] = (None if isinstance(weight_decay_range, str)
                                        else weight_decay_range)
    if batch_sizes is not None:
        space_values["batch_sizes"] = (None if batch_sizes.lower() in ("off", "none")
                                       else _number_list(batch_sizes, int))
    space = build(SearchSpace, {**space_values, "base": base})
    budget_values = {**PROXY_BUDGET, **file.budget}
    if steps is not None:
        budget_values = {**budget_values, "steps": steps, "tokens": None}
    budget = build(Budget, budget_values)
    corpus = load_corpus_or_fail(opts.data)
    config = study_config(spec=spec, space=space, budget=budget, seed=opts.seed,
                          corpus=corpus, data=opts.data)
    name, n_trials = opts.study, opts.trials
    progress = TrialProgress(len(width_list) * n_trials, quiet=as_json)
    try:
        result = run_tune(config, study=name, widths=width_list, trials=n_trials,
                          storage=opts.storage, sampler=opts.sampler, pruning=opts.pruner,
                          workers=opts.workers, warm_start=opts.warm_start,
                          corpus=corpus, threads=threads, on_trial=progress.update,
                          backend=opts.backend, ray=opts.ray_options())
    except (StudyError, ValueError) as error:
        progress.close()
        fail(str(error))
    progress.close()
    if as_json:
        click.echo(result.model_dump_json(indent=2))
        return
    _print_summary(name, result.storage, list(result.widths))
    click.echo(f"{result.wall_time_s:.0f} s. Resume or top up: run the same command again. "
               f"Plot: hptransfer plot --study {name}"
               + ("" if opts.storage is None else f" --storage {result.storage}"))


class TrialProgress:
    """A rich progress bar: trials done, best loss so far, elapsed and ETA (on stderr)."""

    def __init__(self, total: int, *, quiet: bool) -> None:
        self._bar = None
        self._best = math.inf
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
        self._started = False

    def update(self, trial) -> None:
        if self._bar is None:
            return
        if not self._started:  # only once work is under way: errors print on a clean line
            self._bar.start()
            self._started = True
        if trial.final_val_loss is not None and trial.status.value == "complete":
            self._best = min(self._best, trial.final_val_loss)
        best = "best —" if math.isinf(self._best) else f"best {self._best:.4f}"
        self._bar.update(self._task, advance=1, best=f"{best} · last: w{trial.width} "
                                                     f"#{trial.number} {trial.status.value}")

    def close(self) -> None:
        if self._bar is not None and self._started:
            self._bar.stop()


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


def _open(storage: str | None):
    from hptransfer.study.storage import StorageError, open_storage

    try:
        return open_storage(storage)
    except StorageError as error:
        fail(str(error))


@main.command()
@click.option("--study", "study_name", required=True, help="study to join")
@click.option("--storage", required=True, help="the study's storage URL")
@click.option("--width", type=click.IntRange(min=1), default=None,
              help="width to work on [default: each width of the study in turn]")
@click.option("--trials", type=click.IntRange(min=1), required=True,
              help="finished trials wanted per width")
@click.option("--sampler", type=click.Choice([s.value for s in SamplerKind]), default="tpe",
              show_default=True)
@click.option("--pruner", type=click.Choice([p.value for p in Pruning]), default="none",
              show_default=True)
@threads_option
@click.option("--quiet", is_flag=True, help="no progress output")
def worker(study_name, storage, width, trials, sampler, pruner, threads, quiet) -> None:
    """Join a study from this or another machine: run its trials until it has enough.

    The study's spec, budget, search space and corpus come from the storage itself.
    """
    from hptransfer.data.corpus import CorpusError, load_corpus
    from hptransfer.study.ledger import StudyError, load_config, widths_of
    from hptransfer.study.tune import run_worker
    from hptransfer.train.loop import resolve_threads

    optuna_storage = _open(storage)
    try:
        config = load_config(study_name, optuna_storage)
        widths = [width] if width is not None else widths_of(study_name, optuna_storage)
        corpus = load_corpus(config.data)
    except (StudyError, CorpusError) as error:
        fail(str(error))
    if corpus.content_hash != config.corpus_hash:
        fail(f"this machine's corpus ({corpus.content_hash}) is not the study's "
             f"({config.corpus_hash}); workers must see the same data")
    progress = TrialProgress(len(widths) * trials, quiet=quiet)
    try:
        for w in widths:
            run_worker(study_name, w, config, optuna_storage, corpus, trials=trials,
                       sampler=SamplerKind(sampler), pruning=Pruning(pruner),
                       threads=resolve_threads(threads), on_trial=progress.update)
    except StudyError as error:
        progress.close()
        fail(str(error))
    progress.close()


@main.command()
@click.option("--study", "study_name", default=None, help="study [default: list all studies]")
@click.option("--storage", default=None, help="storage URL [default: $HPTRANSFER_HOME/studies.db]")
@click.option("--json", "as_json", is_flag=True, help="print the summaries as JSON")
def status(study_name, storage, as_json) -> None:
    """Summarise a study: per width, trials by status, the best trial and the compute used."""
    from hptransfer.study.ledger import StudyError, load_trials, study_names, summarize

    optuna_storage = _open(storage)
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
    try:
        records = load_trials(study_name, optuna_storage)
    except StudyError as error:
        fail(str(error))
    summaries = summarize(records)
    running = sum(1 for r in records if r.status.value in ("running", "waiting"))
    if as_json:
        click.echo(json.dumps({"study": study_name, "running_or_waiting": running,
                               "widths": [s.model_dump(mode="json") for s in summaries]},
                              indent=2))
        return
    from hptransfer.study.storage import normalize

    _print_summary(study_name, normalize(storage), summaries)
    if running:
        click.echo(f"{running} trial(s) running or waiting")


@main.command()
@click.option("--study", "study_name", required=True, help="study to plot")
@click.option("--storage", default=None, help="storage URL [default: $HPTRANSFER_HOME/studies.db]")
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="folder for the PNG and the HTML report")
def plot(study_name, storage, out) -> None:
    """Write the µTransfer picture: validation loss vs LR, one curve per width."""
    from hptransfer.report.plots import write_study_report
    from hptransfer.study.ledger import StudyError, load_trials, summarize

    try:
        records = load_trials(study_name, _open(storage))
    except StudyError as error:
        fail(str(error))
    png, page = write_study_report(study_name, records, summarize(records), out)
    click.echo(f"plot: {png}\npage: {page}")


"""``hptransfer confirm`` and ``hptransfer report``: check a prediction at the target width,
and write up a study."""

from __future__ import annotations

import sys

import click
from pydantic import ValidationError

from hptransfer.backends import Backend
from hptransfer.cli.app import main
from hptransfer.cli.options import (
    NUMBER,
    address_option,
    check_out,
    fail,
    model_option,
    storage_option,
    threads_option,
    tracker_options,
    tracking_of,
    workers_option,
)
from hptransfer.confirmation.verdict import DEFAULT_OFFSETS, check_offsets
from hptransfer.errors import explain_fields
from hptransfer.spec import Precision
from hptransfer.training.execution import Checkpointing, Compilation, Execution, Sharding


def _offsets(ctx, param, text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of octaves "
                                 f"(example: -1,-0.5,0,0.5,1)") from None
    try:
        unique = check_offsets(values)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    if len(unique) < 2:  # the verdict compares the prediction with its neighbours
        raise click.BadParameter(f"need 0 (the predicted point) and at least one neighbour, "
                                 f"got {text!r}")
    return values


def _existing_storage_or_fail(storage: str | None, study: str) -> None:
    """Refuse a local storage file that does not exist (opening it would create it)."""
    from hptransfer.study.storage import missing_local_file

    missing = missing_local_file(storage)
    if missing is not None:
        fail(f"no study {study!r}: there is no storage file at {missing}; create the study "
             f"with hptransfer tune --study {study} --widths 32,64")


@main.command()
@click.option("--target-width", type=click.IntRange(min=1), required=True,
              help="width (d_model) of the model whose prediction to check")
@click.option("--study", "study_name", default="proxy", show_default=True,
              help="the tuned study the prediction comes from")
@storage_option()
@click.option("--offsets", default=",".join(f"{o:g}" for o in DEFAULT_OFFSETS), show_default=True,
              callback=_offsets, help="LR offsets in octaves around the prediction")
@click.option("--json", "as_json", is_flag=True, help="print the confirmation as JSON")
@threads_option
@click.option("--backend", type=click.Choice([b.value for b in Backend]),
              default=Backend.LOCAL.value, show_default=True,
              help="where each run trains: this process, a Ray Train job on a Ray cluster "
                   "(pip install \"hptransfer[ray]\"), or every process of the torchrun job "
                   "this one belongs to (docs/cluster.md)")
@address_option
@click.option("--workers", default="auto", show_default=True, callback=workers_option,
              help="local: runs side by side, or 'auto' (one thread per run at small widths, "
                   "as many as the CPUs allow); --backend ray: data-parallel workers per run "
                   "('auto': 1), which the predicted batch size must be divisible by")
@click.option("--cpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True,
              help="--backend ray: CPUs (= training threads) per worker")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="--backend ray: GPUs per worker (NCCL; a fraction shares a card)")
@click.option("--device", default=None,
              help="local: cpu, cuda or cuda:N (one run at a time on a card); torchrun: cpu or "
                   "cuda (each rank its LOCAL_RANK's card) [default: cpu; torchrun: its GPU "
                   "if torch sees one]")
@click.option("--sharding", type=click.Choice([s.value for s in Sharding]),
              default=Sharding.REPLICATE.value, show_default=True,
              help="how the workers of a Ray or torchrun job hold the model: replicate (DDP) "
                   "or fsdp (FSDP2: each holds 1/N, for a target too big for one device)")
@click.option("--compile", "compiled", is_flag=True,
              help="run the training step through torch.compile (faster on a GPU, after a "
                   "compile of tens of seconds)")
@click.option("--precision", type=click.Choice([p.value for p in Precision]), default=None,
              help="matmul precision of the target runs [default: the study's]; bf16 is "
                   "autocast with fp32 weights and optimizer state")
@click.option("--checkpoint-minutes", type=NUMBER, default=10.0,
              show_default=True, help="save a checkpoint a killed run resumes from after this "
                                      "many minutes (0: not by time)")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="... and after this many steps (0: not by steps)")
@click.option("--checkpoint-dir", type=click.Path(file_okay=False), default=None,
              help="where checkpoints go; on a multi-node job a shared folder every rank "
                   "of every attempt can reach [default: $HPTRANSFER_HOME/checkpoints]")
@model_option
@tracker_options
def confirm(target_width, study_name, storage, offsets, as_json, threads, backend, address,
            workers, cpus_per_worker, gpus_per_worker, device, sharding, compiled, precision,
            checkpoint_minutes, checkpoint_every, checkpoint_dir, model, trackers,
            tracker_dir) -> None:
    """Train the predicted point and its LR neighbours at --target-width and judge it.

    The runs are recorded in the study's storage (as the Optuna study
    NAME.confirm.wWIDTH); running the command again trains only the missing ones and
    retries failed ones. The verdict is CONFIRMED, OPTIMUM HIGHER, OPTIMUM LOWER or
    INCONCLUSIVE, with the loss regret of the prediction; the exit status is 0 whatever the
    verdict, and 1 when every run failed.

    With --backend ray each run is a Ray Train job of --workers data-parallel workers; the
    runs are recorded, by this process, exactly like local ones. With --backend torchrun
    every process of the torchrun job (torchrun --nproc-per-node N -m hptransfer.cli confirm
    ... --backend torchrun) is a worker, and rank 0 records. A killed run resumes from its
    last checkpoint when the command is run again.
    """
    from hptransfer.confirmation.runs import confirm as run_confirm
    from hptransfer.confirmation.runs import default_execution

    _existing_storage_or_fail(storage, study_name)
    tracking = tracking_of(trackers, tracker_dir)  # $HPTRANSFER_TRACKER: a bad name exits 2
    if checkpoint_minutes < 0:
        fail(f"--checkpoint-minutes must be 0 (no time-based checkpoints) or more, got "
             f"{checkpoint_minutes:g}")
    checkpoint = None
    if checkpoint_minutes or checkpoint_every:
        folder = checkpoint_dir or default_execution().checkpoint.folder
        checkpoint = Checkpointing(folder=folder, every_minutes=checkpoint_minutes or None,
                                   every_steps=checkpoint_every or None)
    execution = Execution(sharding=Sharding(sharding), checkpoint=checkpoint,
                          compilation=Compilation.COMPILED if compiled else Compilation.EAGER)

    def progress(run) -> None:
        if not as_json:
            loss = "" if run.loss is None else f" loss {run.loss:.4f}"
            click.echo(f"  offset {run.offset:+g}: lr {run.lr:.4g} {run.status.value}{loss}")

    result = run_confirm(target_width, study=study_name, storage=storage, offsets=offsets,
                         threads=threads, on_run=progress, backend=Backend(backend),
                         workers=workers, address=address, cpus_per_worker=cpus_per_worker,
                         gpus_per_worker=gpus_per_worker, device=device, execution=execution,
                         precision=Precision(precision) if precision else None, model=model,
                         tracking=tracking)
    code = 0
    if result is not None:  # (None: a torchrun rank other than 0: it trained, rank 0 reports)
        if as_json:
            click.echo(result.model_dump_json(indent=2))
        else:
            print_confirmation(result)
        failed = [run for run in result.runs if run.status.value == "error"]
        if failed and len(failed) == len(result.runs):
            click.echo(f"error: every confirmation run failed ({failed[0].reason}); they "
                       f"are recorded, and the same command retries them", err=True)
            code = 1
    if Backend(backend) is Backend.TORCHRUN:  # every rank has left the job by now
        from hptransfer.confirmation.torchrun import end_process

        end_process(code)
    if code:
        sys.exit(code)


def print_confirmation(result) -> None:
    echo = click.echo
    echo(f"study {result.study} → width {result.target_width}: predicted lr "
         f"{result.predicted_lr:.4g}")
    echo(f"  {'offset':>7} {'lr':>10} {'status':>9} {'val loss':>9} {'bits/byte':>9}")
    for run in result.runs:
        loss = "" if run.loss is None else f"{run.loss:.4f}"
        bpb = "" if run.bits_per_byte is None else f"{run.bits_per_byte:.4f}"
        mark = "  ← best" if run.offset == result.best_offset else ""
        echo(f"  {run.offset:>+7g} {run.lr:>10.4g} {run.status.value:>9} {loss:>9} {bpb:>9}"
             f"{mark}")
    regret = "n/a" if result.regret is None else f"{100 * result.regret:.2f}%"
    color = {"CONFIRMED": "green", "INCONCLUSIVE": "yellow"}.get(result.verdict.value, "red")
    echo("")
    echo(click.style(f"verdict: {result.verdict.value}", fg=color, bold=True)
         + f"  (regret {regret}, tolerance {100 * result.tolerance:.2g}%"
         + ("" if result.noise is None else f", seed noise {100 * result.noise:.2f}% per run")
         + ")")
    for note in result.notes:
        echo(f"  - {note}")


@main.command()
@click.option("--target-width", type=click.IntRange(min=1), required=True,
              help="width (d_model) of the target whose prediction to score")
@click.option("--study", "study_name", default="proxy", show_default=True,
              help="the tuned study the prediction comes from")
@storage_option()
@click.option("--points", type=click.IntRange(min=3), default=5, show_default=True,
              help="LRs of the SP baseline's octave grid (odd: the centre ± (points-1)/2 "
                   "octaves)")
@click.option("--json", "as_json", is_flag=True, help="print the score as JSON")
@threads_option
def score(target_width, study_name, storage, points, as_json, threads) -> None:
    """Score the prediction against the model you would train without it: an SP model of
    --target-width on its own octave LR grid (every other hparam as predicted; same data,
    tokens and seed), against the confirmation run at the prediction.

    The grid is recorded as the study NAME.sp-baseline (running the command again trains
    only what is missing); the confirmation run at the prediction comes from
    hptransfer confirm, which this runs first (offset 0 only) when it has not run.
    """
    from hptransfer.confirmation.runs import confirm as run_confirm
    from hptransfer.confirmation.runs import load_confirmation
    from hptransfer.confirmation.score import score as score_of
    from hptransfer.confirmation.score import tune_sp_baseline
    from hptransfer.study.worker import LocalRunner

    if points % 2 == 0:
        fail(f"--points must be odd (the grid's centre and as many octaves each side), got "
             f"{points}")
    _existing_storage_or_fail(storage, study_name)
    confirmation = load_confirmation(study_name, target_width, storage)
    if confirmation is None or not any(r.offset == 0.0 and r.loss is not None
                                       for r in confirmation.runs):
        if not as_json:
            click.echo(f"the prediction at width {target_width}: one run (hptransfer confirm "
                       f"--offsets 0)")
        run_confirm(target_width, study=study_name, storage=storage, offsets=(0.0,),
                    threads=threads)
    if not as_json:
        click.echo(f"the SP baseline at width {target_width}: {points} LRs one octave apart")
    tune_sp_baseline(target_width, study=study_name, storage=storage, points=points,
                     runner=LocalRunner(threads=threads))
    result = score_of(study_name, target_width, storage)
    if as_json:
        click.echo(result.model_dump_json(indent=2))
    else:
        print_score(result)


def print_score(result) -> None:
    echo = click.echo
    echo(f"  {'SP lr':>10} {'status':>9} {'val loss':>9}")
    for run in result.baseline:
        loss = "" if run.loss is None else f"{run.loss:.4f}"
        mark = "  ← best" if run.lr == result.baseline_lr else ""
        echo(f"  {run.lr:>10.4g} {run.status:>9} {loss:>9}{mark}")
    verdict = result.verdict()
    color = {"BETTER": "green", "EQUAL": "green", "WORSE": "red"}.get(verdict, "yellow")
    echo(click.style("score:", fg=color, bold=True) + f" {result.summary()}")


@main.command()
@click.option("--study", "study_name", required=True, help="study to report on")
@storage_option()
@click.option("--target-width", type=click.IntRange(min=1), default=None,
              help="width to show the prediction for [default: the widest confirmed one, "
                   "else none]")
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="folder for the Markdown and HTML report")
@model_option
def report(study_name, storage, target_width, out, model) -> None:
    """Write NAME_report.md and a self-contained NAME_report.html: the µTransfer plot, the
    LR optimum vs width with the prediction, its rules and warnings, and the confirmation
    runs with their verdict."""
    from hptransfer.report.study_report import write_report
    from hptransfer.study.attributes import load_config
    from hptransfer.transfer.predictor import check_model

    check_out(out, folder=True)
    _existing_storage_or_fail(storage, study_name)
    config = load_config(study_name, storage)
    check_model(study_name, config, model)
    if target_width is not None:
        try:
            config.spec_at(target_width)
        except ValidationError as error:
            fail(f"--target-width {target_width}: {explain_fields(error)}")
    written = write_report(study_name, storage=storage, target_width=target_width, out_dir=out)
    click.echo(f"markdown: {written.markdown}\nhtml:     {written.html}")
    if written.verdict is not None:
        click.echo(f"verdict at width {written.target_width}: {written.verdict}")

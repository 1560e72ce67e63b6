"""Commands about single runs: ``train``, ``describe``, ``coord-check``, ``quickstart``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from hptransfer import checks
from hptransfer.budget import Budget
from hptransfer.cli.app import main
from hptransfer.cli.options import (
    NUMBER,
    build,
    check_out,
    config_options,
    data_option,
    explain,
    fail,
    threads_option,
    tracker_options,
    tracking_of,
    widths_option,
)
from hptransfer.data.source import DataSource
from hptransfer.hparams import HParams
from hptransfer.spec import DepthRule, ModelSpec, Parametrization, RoleSource
from hptransfer.study.config import PROXY_BUDGET, PROXY_SPEC


@main.command()
@config_options(ModelSpec, HParams, Budget)
@click.option("--seed", type=int, default=0, show_default=True, help="init and data seed")
@data_option
@threads_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="also write the run record (JSON) to this file")
@click.option("--json", "as_json", is_flag=True, help="print the run record as JSON")
def train(seed: int, data: DataSource | None, threads: int | None, out: str | None, as_json: bool,
          **values: Any) -> None:
    """Train one model and print its record (validation loss, cost, status)."""
    from hptransfer.data.corpus import load_corpus
    from hptransfer.report.files import write_atomic
    from hptransfer.training.loop import train as run

    # Validate every option before touching the corpus or torch; the vocabulary, when not
    # given, is the corpus's and is filled in once the corpus is loaded.
    check_out(out, folder=False)
    spec, hparams, budget = (build(m, values) for m in (ModelSpec, HParams, Budget))
    corpus = load_corpus(data)
    if values.get("vocab") is None:
        spec = build(ModelSpec, {**values, "vocab": corpus.vocab_size})
    record = run(spec, hparams, budget, corpus, seed=seed, threads=threads)
    text = record.model_dump_json(indent=2)
    if out:
        write_atomic(Path(out), text)
    if as_json:
        click.echo(text)
        return
    final = "n/a" if record.final_val_loss is None else f"{record.final_val_loss:.4f}"
    if record.final_val_bpb is not None:
        final += f" ({record.final_val_bpb:.4f} bits/byte)"
    click.echo(f"{record.status.value}: validation loss {final} after {record.steps} steps "
               f"({record.tokens_seen:,} tokens, {record.flops:.3g} FLOPs, "
               f"{record.wall_time_s:.1f} s, {record.tokens_per_s:,.0f} tokens/s)")
    if record.reason:
        click.echo(f"reason: {record.reason}")


@main.command()
@config_options(ModelSpec, HParams, exclude=("batch_size", "warmup_fraction", "schedule",
                                            "final_lr_fraction", "beta1", "beta2",
                                            "grad_clip"))
@click.option("--json", "as_json", is_flag=True, help="print a JSON list, one object a tensor")
def describe(as_json: bool, **values: Any) -> None:
    """Show every parameter tensor's µP role, shape, init std and LR multiplier."""
    from hptransfer.models.registry import role_table
    from hptransfer.mup.rules import residual_multiplier
    from hptransfer.mup.tensors import tensor_rules

    spec, hparams = build(ModelSpec, values), build(HParams, values)
    rules = tensor_rules(role_table(spec), spec, hparams)
    if as_json:
        click.echo(json.dumps([rule.as_dict() for rule in rules], indent=2))
        return
    depth_rule = ("" if spec.depth_rule is DepthRule.NONE else
                  f", depth rule {spec.depth_rule.value} (residual branches × L₀/L = "
                  f"{residual_multiplier(spec):g})")
    model = "" if spec.model == "builtin" else f", model {spec.model}"
    click.echo(f"{spec.param.value}: width {spec.width} (m = {spec.width_multiplier:g}), "
               f"depth {spec.depth}, heads {spec.heads} × {spec.head_dim}, attention scale "
               f"{spec.attention_scale.value}, lr α = {hparams.lr:g}{depth_rule}{model}")
    name = max(28, *(len(rule.name) for rule in rules))
    click.echo(f"{'name':<{name}} {'role':<10} {'shape':<12} {'init':>10} {'lr mult':>9} "
               f"{'wd (λ)':>9}")
    for rule in rules:
        shape = "×".join(str(s) for s in rule.shape)
        init = f"{rule.init_std:.4g}" if rule.init == "normal" else rule.init
        click.echo(f"{rule.name:<{name}} {rule.role.value:<10} {shape:<12} {init:>10} "
                   f"{rule.lr_multiplier:>9.4g} {rule.weight_decay:>9.3g}")


@main.command("coord-check")
@click.option("--widths", default=",".join(map(str, checks.WIDTHS)), show_default=True,
              callback=widths_option(minimum=2), help="comma-separated widths")
@click.option("--param", type=click.Choice([p.value for p in Parametrization]),
              default="mup", show_default=True, help="parametrization")
@click.option("--steps", type=click.IntRange(min=2), default=checks.STEPS, show_default=True,
              help="training steps per width (t = 1 is the initial model)")
@click.option("--lr", type=NUMBER, default=None,
              help="constant learning rate [default: 2^-5; for mup-abs 2^-5 × base width, the "
                   "same hidden-matrix LR at base width]")
@click.option("--depth", type=click.IntRange(min=1), default=checks.DEPTH, show_default=True,
              help="transformer blocks")
@click.option("--head-dim", type=click.IntRange(min=2),
              default=ModelSpec.model_fields["head_dim"].default, show_default=True,
              help="per-head dimension D, fixed across widths")
@click.option("--model", default="builtin", show_default=True,
              help=ModelSpec.model_fields["model"].description)
@click.option("--roles", type=click.Choice([r.value for r in RoleSource]), default="auto",
              show_default=True, help=ModelSpec.model_fields["roles"].description)
@click.option("--tolerance", type=click.FloatRange(min=1.0, min_open=True),
              default=checks.TOLERANCE,
              show_default=True, help="allowed growth factor per doubling of width")
@click.option("--seed", type=int, default=0, show_default=True,
              help="the first init and data seed")
@click.option("--seeds", type=click.IntRange(min=1), default=checks.SEEDS, show_default=True,
              help="seeds averaged over (each its own init and batches); a slope fails only "
                   "outside the band by more than 2 standard errors of their mean")
@click.option("--out", type=click.Path(file_okay=False), default="coord_check",
              show_default=True, help="folder for the JSON report and PNG plot")
@data_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def coord_check_command(widths: tuple[int, ...], param: str, steps: int, lr: float | None,
                        depth: int, head_dim: int, model: str, roles: str, tolerance: float,
                        seed: int, seeds: int, out: str, data: DataSource | None,
                        threads: int | None, as_json: bool) -> None:
    """Check that activations stay flat in width (exit 0) or not (exit 1)."""
    from hptransfer.checks.coord_check import coord_check
    from hptransfer.data.corpus import load_corpus
    from hptransfer.report.coord_check import write_coord_check

    check_out(out, folder=True)
    try:
        for width in widths:
            ModelSpec(width=width, head_dim=head_dim, param=param, model=model, roles=roles)
    except ValidationError as error:
        fail(explain(error))
    if lr is not None and lr <= 0:
        fail(f"--lr: must be positive, got {lr}")
    corpus = load_corpus(data)
    report = coord_check(widths=widths, param=param, steps=steps, lr=lr, depth=depth,
                         head_dim=head_dim, tolerance=tolerance, seed=seed, seeds=seeds,
                         corpus=corpus,
                         threads=threads, vocab=max(corpus.vocab_size, 2), model=model,
                         roles=roles)
    json_path, png_path = write_coord_check(report, out)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        click.echo(f"coord check {model} {param}, widths {','.join(map(str, widths))}, lr "
                   f"{report.lr:g}, {seeds} seed(s): {'PASS' if report.passed else 'FAIL'}")
        for growth in report.failures:
            spread = (f", slope ±{growth.slope_se:.2f} over the seeds" if growth.slope_se
                      else "")
            click.echo(f"  {growth.module} at t={growth.step}: ×{growth.per_doubling:.2f} per "
                       f"doubling of width{spread} (allowed ×{1 / tolerance:.2f}.."
                       f"×{tolerance:.2f})")
        click.echo(f"report: {json_path}\nplot:   {png_path}")
    sys.exit(0 if report.passed else 1)


QUICKSTART_WIDTHS = (32, 64)  # the µP proxies: cheap on 2 CPU cores
QUICKSTART_TARGET = 128  # the width it predicts and then confirms, within a few minutes
QUICKSTART_HORIZON = 1024  # the wider width whose compute it also prices
GRID_POINTS = 7  # the LR grid a target would need without transfer (2^-11 … 2^-5)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="quickstart",
              show_default=True, help="folder for the study, the coord check and the report")
@click.option("--steps", type=click.IntRange(min=2), default=PROXY_BUDGET["steps"],
              show_default=True, help="training steps per trial and per confirmation run")
@click.option("--target-width", type=click.IntRange(min=1), default=QUICKSTART_TARGET,
              show_default=True, help="the width to predict, then confirm")
@threads_option
@tracker_options
def quickstart(out: str, steps: int, target_width: int, threads: int | None, trackers,
               tracker_dir) -> None:
    """The README's first job: coord check, tune µP proxies with the ladder, predict a wider
    model, confirm the prediction there, score it against an SP model of that width tuned on
    its own LR grid, and say what it cost.

    Everything lands in --out (the study in studies.db, the report and pictures); running it
    again resumes. It calls the public Python API, the same functions a user would.
    """
    import hptransfer as hp
    from hptransfer.cli.confirmation import print_confirmation, print_score
    from hptransfer.cli.predict import print_prediction
    from hptransfer.cli.studies import TrialProgress, print_search
    from hptransfer.confirmation.score import BASELINE_POINTS, score, tune_sp_baseline
    from hptransfer.report.files import write_atomic
    from hptransfer.tracking import ready

    check_out(out, folder=True)
    build(ModelSpec, {**PROXY_SPEC, "width": target_width})  # a target it can predict for
    folder = Path(out).resolve()
    storage = f"sqlite:///{folder / 'studies.db'}"
    # checked once here: a tracker that cannot log warns once, not in the tune and again in
    # the confirm; its local files go in --out with the rest
    tracking = ready(tracking_of(trackers, tracker_dir or str(folder)))
    started = time.perf_counter()
    click.echo("1/5 coord check, µP, widths 32..256")
    report = hp.coord_check(threads=threads)
    _, png_path = hp.write_coord_check(report, folder)
    click.echo(f"    {'PASS' if report.passed else 'FAIL'}: {png_path}")

    widths = QUICKSTART_WIDTHS
    runner = hp.LocalRunner(threads=threads)
    click.echo(f"2/5 tune the base LR of µP proxies at widths {widths[0]} and {widths[1]} with "
               f"the ladder search, {steps} steps per trial; "
               f"{runner.placement(widths[0]).describe()}")
    config = hp.study_config(space=hp.SearchSpace(weight_decay=None, batch_sizes=None,
                                                  base=hp.HParams(batch_size=16)),
                             budget=hp.Budget(steps=steps, eval_every=steps), widths=widths)
    progress = TrialProgress(None, quiet=False)
    try:
        result = hp.tune(config, study="quickstart", widths=widths, storage=storage,
                         runner=runner, on_trial=progress.update, tracking=tracking)
    finally:
        progress.close()
    print_search(result.search)

    click.echo(f"3/5 predict the hparams of width {target_width}")
    prediction = hp.predict_hparams(target_width, study="quickstart", storage=storage)
    write_atomic(folder / "prediction.json", prediction.model_dump_json(indent=2))
    print_prediction(prediction)

    click.echo(f"4/5 confirm at width {target_width}: the predicted LR and ±½, ±1 octave")
    confirmation = hp.confirm(target_width, study="quickstart", storage=storage,
                              threads=threads, tracking=tracking)
    print_confirmation(confirmation)

    click.echo(f"5/5 the score: an SP model of width {target_width} on its own "
               f"{BASELINE_POINTS}-point LR grid, against µP at the prediction")
    tune_sp_baseline(target_width, study="quickstart", storage=storage, runner=runner,
                     tracking=tracking)
    print_score(score("quickstart", target_width, storage))
    written = hp.write_report("quickstart", storage=storage, target_width=target_width,
                              out_dir=folder)

    records = hp.load_trials("quickstart", storage)
    proxy_flops = sum(r.flops for r in records)
    click.echo("")
    click.echo("compute:")
    for width in (target_width, QUICKSTART_HORIZON):
        run = config.spec_at(width).flops_per_token() * config.tokens_per_trial()
        click.echo(f"  the proxies cost {proxy_flops:.3g} FLOPs: "
                   f"{100 * proxy_flops / (GRID_POINTS * run):.1f}% of a {GRID_POINTS}-point "
                   f"LR grid at width {width} ({GRID_POINTS} × {run:.3g} FLOPs)")
    click.echo(f"report: {written.markdown} (and .html; the µTransfer plot with the width "
               f"{target_width} runs: {folder / 'quickstart_transfer.png'})")
    click.echo(f"{time.perf_counter() - started:.0f} s")
    sys.exit(0 if report.passed else 1)

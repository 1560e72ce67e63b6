"""The ``hptransfer`` command line.

Options of ``train`` and ``describe`` are generated from the fields of :class:`ModelSpec`,
:class:`HParams` and :class:`Budget`, so the CLI cannot drift from the configs: a field
``head_dim`` is the option ``--head-dim``, an enum field takes its values as choices, and
the help text is the field's description. Invalid input exits with status 2 and a message
naming the option, before anything is trained or written.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import BaseModel, ValidationError

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.spec import ModelSpec, Parametrization

__all__ = ["main"]


# ---- numbers like 2^-6 --------------------------------------------------------------------

class _Number(click.ParamType):
    """A float that may also be written as a power of two: ``2^-6`` or ``2**-6``."""

    name = "number"

    def convert(self, value: Any, param, ctx) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        text = str(value).strip().replace("**", "^")
        try:
            if "^" in text:
                base, exponent = text.split("^", 1)
                number = float(base) ** float(exponent)
            else:
                number = float(text)
        except (ValueError, OverflowError):
            number = None
        if not isinstance(number, float) or not math.isfinite(number):
            self.fail(f"{value!r} is not a finite real number (examples: 0.015, 1e-3, 2^-6)",
                      param, ctx)
        return number


NUMBER = _Number()


# ---- options generated from the pydantic configs ------------------------------------------

def _option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


def _click_type(annotation: Any) -> Any:
    candidates = [a for a in (get_args(annotation) or (annotation,)) if a is not type(None)]
    kind = candidates[0]
    if isinstance(kind, type) and issubclass(kind, Enum):
        return click.Choice([member.value for member in kind])
    if kind is int:
        return int
    if kind is float:
        return NUMBER
    return str


def config_options(*models: type[BaseModel], exclude: tuple[str, ...] = ()):
    """Decorator adding one option per field of ``models``; values arrive as ``None`` when
    not given, so the config's own defaults apply."""

    def decorate(command):
        for model in reversed(models):
            for name, field in reversed(list(model.model_fields.items())):
                if name in exclude:
                    continue
                default = field.default
                shown = default.value if isinstance(default, Enum) else default
                hint = (f" [default: {shown}]" if default is not None
                        else " [default: depends on --param]")
                command = click.option(_option_name(name), name, type=_click_type(
                    field.annotation), default=None, help=(field.description or "") + hint
                )(command)
        return command

    return decorate


def _pick(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in model.model_fields and v is not None}


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _explain(error: ValidationError) -> str:
    """One line per problem, naming the option. Model-level checks write ``field=value``;
    those field names are rewritten as the options a CLI user types."""
    lines = []
    for item in error.errors():
        field = item["loc"][0] if item["loc"] else None
        message = item["msg"].removeprefix("Value error, ")
        if field:
            lines.append(f"{_option_name(str(field))}: {message} (got {item.get('input')!r})")
        else:
            lines.append(re.sub(r"\b([a-z][a-z0-9_]*)=",
                                lambda m: f"{_option_name(m.group(1))}=", message))
    return "; ".join(lines)


def build(model: type[BaseModel], values: dict[str, Any]) -> Any:
    """Validate ``values`` into ``model`` or exit 2 with a message naming the option."""
    try:
        return model(**_pick(model, values))
    except ValidationError as error:
        _fail(_explain(error))


def _load_corpus(data: str | None):
    from hptransfer.corpus import CorpusError, load_corpus

    try:
        return load_corpus(data)
    except CorpusError as error:
        _fail(str(error))


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file in the same folder and rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers "
                                 f"(example: 32,64,128)") from None
    if len(widths) < 2 or any(w <= 0 for w in widths):
        raise click.BadParameter(f"need at least two positive widths, got {text!r}")
    return widths


data_option = click.option(
    "--data", type=click.Path(), default=None,
    help="corpus: a text file, a .bin token file, or a folder with train.bin and val.bin "
         "[default: the built-in Python standard library corpus]")
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="torch threads [default: $HPTRANSFER_THREADS, else all available CPUs]")


# ---- commands -----------------------------------------------------------------------------

@click.group(context_settings={"help_option_names": ["-h", "--help"],
                               "max_content_width": 100})
@click.version_option(package_name="hptransfer")
def main() -> None:
    """Tune hyperparameters on small µP proxies; transfer them to the model you train."""


@main.command()
@config_options(ModelSpec, HParams, Budget)
@click.option("--seed", type=int, default=0, show_default=True, help="init and data seed")
@data_option
@threads_option
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="also write the run record (JSON) to this file")
@click.option("--json", "as_json", is_flag=True, help="print the run record as JSON")
def train(seed: int, data: str | None, threads: int | None, out: str | None, as_json: bool,
          **values: Any) -> None:
    """Train one model and print its record (validation loss, cost, status)."""
    from hptransfer.training import train as run

    # Validate every option before touching the corpus or torch; the vocabulary, when not
    # given, is the corpus's and is filled in once the corpus is loaded.
    spec, hparams, budget = (build(m, values) for m in (ModelSpec, HParams, Budget))
    corpus = _load_corpus(data)
    if values.get("vocab") is None:
        spec = build(ModelSpec, {**values, "vocab": corpus.vocab_size})
    try:
        record = run(spec, hparams, budget, corpus, seed=seed, threads=threads)
    except ValueError as error:
        _fail(str(error))
    text = record.model_dump_json(indent=2)
    if out:
        _write_atomic(Path(out), text)
    if as_json:
        click.echo(text)
        return
    final = "n/a" if record.final_val_loss is None else f"{record.final_val_loss:.4f}"
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
    from hptransfer.model import Transformer
    from hptransfer.parametrization import tensor_rules

    spec, hparams = build(ModelSpec, values), build(HParams, values)
    rules = tensor_rules(Transformer(spec), spec, hparams)
    if as_json:
        click.echo(json.dumps([rule.as_dict() for rule in rules], indent=2))
        return
    click.echo(f"{spec.param.value}: width {spec.width} (m = {spec.width_multiplier:g}), "
               f"depth {spec.depth}, heads {spec.heads} × {spec.head_dim}, "
               f"attention scale {spec.attention_scale.value}, lr α = {hparams.lr:g}")
    header = f"{'name':<28} {'role':<10} {'shape':<12} {'init':>10} {'lr mult':>9} " \
             f"{'wd (λ)':>9}"
    click.echo(header)
    for rule in rules:
        shape = "×".join(str(s) for s in rule.shape)
        init = f"{rule.init_std:.4g}" if rule.init == "normal" else rule.init
        click.echo(f"{rule.name:<28} {rule.role.value:<10} {shape:<12} {init:>10} "
                   f"{rule.lr_multiplier:>9.4g} {rule.weight_decay:>9.3g}")


@main.command("coord-check")
@click.option("--widths", default="32,64,128,256", show_default=True, callback=lambda c, p, v:
              _widths(v), help="comma-separated widths")
@click.option("--param", type=click.Choice([p.value for p in Parametrization]),
              default="mup", show_default=True, help="parametrization")
@click.option("--steps", type=click.IntRange(min=2), default=4, show_default=True,
              help="training steps per width (t = 1 is the initial model)")
@click.option("--lr", type=NUMBER, default=None,
              help="constant learning rate [default: 2^-5; for mup-abs 2^-5 × base width, the "
                   "same hidden-matrix LR at base width]")
@click.option("--depth", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--head-dim", type=click.IntRange(min=2), default=16, show_default=True)
@click.option("--tolerance", type=click.FloatRange(min=1.0, min_open=True), default=1.25,
              show_default=True, help="allowed growth factor per doubling of width")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="coord_check",
              show_default=True, help="folder for the JSON report and PNG plot")
@data_option
@threads_option
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON")
def coord_check_command(widths: tuple[int, ...], param: str, steps: int, lr: float | None,
                        depth: int, head_dim: int, tolerance: float, seed: int, out: str,
                        data: str | None, threads: int | None, as_json: bool) -> None:
    """Check that activations stay flat in width (exit 0) or not (exit 1)."""
    from hptransfer.coord_check import coord_check, write_report

    try:
        spec = ModelSpec(width=widths[0], head_dim=head_dim, param=param)
        for width in widths:
            ModelSpec(width=width, head_dim=head_dim, param=param)
    except ValidationError as error:
        _fail(_explain(error))
    if lr is not None and lr <= 0:
        _fail(f"--lr: must be positive, got {lr}")
    if lr is None:
        lr = 2.0**-5 * (spec.base_width if spec.param is Parametrization.MUP_ABS else 1)
    corpus = _load_corpus(data)
    report = coord_check(widths=widths, param=param, steps=steps, lr=lr, depth=depth,
                         head_dim=head_dim, tolerance=tolerance, seed=seed, corpus=corpus,
                         threads=threads, vocab=max(corpus.vocab_size, 2))
    json_path, png_path = write_report(report, out)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        click.echo(f"coord check {param}, widths {','.join(map(str, widths))}, lr {lr:g}: "
                   f"{'PASS' if report.passed else 'FAIL'}")
        for growth in report.failures:
            click.echo(f"  {growth.module} at t={growth.step}: ×{growth.per_doubling:.2f} per "
                       f"doubling of width (allowed ×{1 / tolerance:.2f}..×{tolerance:.2f})")
        click.echo(f"report: {json_path}\nplot:   {png_path}")
    sys.exit(0 if report.passed else 1)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="quickstart",
              show_default=True, help="folder for the run record and the coord check")
@click.option("--steps", type=click.IntRange(min=2), default=150, show_default=True)
@threads_option
def quickstart(out: str, steps: int, threads: int | None) -> None:
    """The README's first job: a short µP run and a coord check on the built-in corpus."""
    from hptransfer.coord_check import coord_check, write_report
    from hptransfer.training import train as run

    folder = Path(out)
    click.echo("1/2 coord check, µP, widths 32..256 ...")
    report = coord_check(threads=threads)
    json_path, png_path = write_report(report, folder)
    click.echo(f"    {'PASS' if report.passed else 'FAIL'}: {png_path}")
    spec = ModelSpec(width=64)
    hparams = HParams(lr=2.0**-6)
    click.echo(f"2/2 µP training run, width {spec.width}, {steps} steps, lr 2^-6 ...")
    record = run(spec, hparams, Budget(steps=steps, eval_every=max(1, steps // 5)),
                 threads=threads)
    _write_atomic(folder / "run.json", record.model_dump_json(indent=2))
    for point in record.val_curve:
        click.echo(f"    step {point.step:>5}: validation loss {point.loss:.4f}")
    click.echo(f"    {record.status.value}, {record.tokens_per_s:,.0f} tokens/s, "
               f"{record.wall_time_s:.0f} s; record: {folder / 'run.json'}")
    sys.exit(0 if report.passed and record.ok else 1)


if __name__ == "__main__":  # python -m hptransfer.cli
    main()


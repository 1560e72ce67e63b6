"""Options and helpers shared by hptransfer's commands.

Options of ``train``, ``describe`` and ``tune`` are generated from the fields of the typed
configs (:func:`config_options`), so the CLI cannot drift from them: a field ``head_dim`` is
the option ``--head-dim``, an enum field takes its values as choices, and the help text is
the field's description. Invalid input exits with status 2 and a message naming the
option, before anything is trained or written (:func:`build`, :func:`fail`). Options that
several commands share are declared once here.
"""

from __future__ import annotations

import math
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any, get_args

import click
from pydantic import BaseModel, ValidationError

from hptransfer.study.config import OFF

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


def shown_default(model: type[BaseModel], name: str, defaults: dict[str, Any] | None = None
                  ) -> str:
    """The default an option of ``model``'s field ``name`` stands for, as its help shows it:
    the command's own (``defaults``), the field's ``cli_default`` words where the value
    follows from other fields, else the field's default."""
    field = model.model_fields[name]
    if defaults and name in defaults:
        value = defaults[name]
    else:
        extra = field.json_schema_extra or {}
        if "cli_default" in extra:
            return str(extra["cli_default"])
        value = field.default
    return str(value.value if isinstance(value, Enum) else value)


def config_options(*models: type[BaseModel], exclude: tuple[str, ...] = (),
                   defaults: dict[str, Any] | None = None):
    """Decorator adding one option per field of ``models``; values arrive as ``None`` when
    not given, so the config's own defaults apply (or the command's ``defaults``, which the
    help then shows: the help is made from the objects the code uses)."""

    def decorate(command):
        for model in reversed(models):
            for name, field in reversed(list(model.model_fields.items())):
                if name in exclude:
                    continue
                hint = f" [default: {shown_default(model, name, defaults)}]"
                command = click.option(_option_name(name), name, type=_click_type(
                    field.annotation), default=None, help=(field.description or "") + hint
                )(command)
        return command

    return decorate


def _pick(model: type[BaseModel], values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in model.model_fields and v is not None}


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def explain(error: ValidationError) -> str:
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
        fail(explain(error))


def _number_list(text: str, kind=float) -> tuple:
    try:
        return tuple(kind(NUMBER.convert(v, None, None)) for v in text.split(",") if v.strip())
    except (click.BadParameter, ValueError):
        raise click.BadParameter(f"{text!r} is not a comma-separated list of numbers") from None


def range_option(ctx, param, text: str | None):
    """``LOW,HIGH`` as two numbers, or ``off`` (the range is not searched), or None."""
    if text is None:
        return None
    if text.lower() in ("off", "none", "fixed"):
        return OFF
    values = _number_list(text)
    if len(values) != 2:
        raise click.BadParameter(f"give LOW,HIGH (e.g. 2^-12,2^-2), got {text!r}")
    return values


def batch_sizes_option(ctx, param, text: str | None):
    """Comma-separated batch sizes, or ``off``, or None."""
    if text is None:
        return None
    if text.lower() in ("off", "none"):
        return OFF
    return _number_list(text, int)


def workers_option(ctx, param, text: str | None):
    """``--workers``: a positive number, or ``auto``; None when not given."""
    if text is None:
        return None
    if text.strip().lower() == "auto":
        return "auto"
    try:
        workers = int(text)
    except ValueError:
        workers = 0
    if workers < 1:
        raise click.BadParameter(f"give a positive number of workers or 'auto', got {text!r}")
    return workers


def widths_option(minimum: int = 1):
    """A click callback parsing comma-separated positive widths, at least ``minimum``."""

    def parse(ctx, param, text: str | None) -> tuple[int, ...] | None:
        if text is None:
            return None
        try:
            widths = tuple(int(w) for w in text.split(",") if w.strip())
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a comma-separated list of integers "
                                     f"(example: 32,64,128)") from None
        if len(widths) < minimum or any(w <= 0 for w in widths):
            raise click.BadParameter(f"need at least {minimum} positive width(s), got "
                                     f"{text!r} (example: 32,64,128)")
        return widths

    return parse


def check_out(path: str | Path | None, *, folder: bool) -> None:
    """Refuse, before any compute, an output that cannot be written: a file where a folder
    is wanted (or the reverse), or a place this user cannot write to."""
    if path is None:
        return
    target = Path(path).expanduser()
    if target.exists():
        if folder and not target.is_dir():
            fail(f"--out {path} is a file; give a folder for the outputs")
        if not folder and target.is_dir():
            fail(f"--out {path} is a folder; give a file name, e.g. {target / 'out.json'}")
    from hptransfer.study.storage import unwritable_folder

    place = unwritable_folder(target if folder else target.parent)
    if place is not None:
        fail(f"--out {path}: cannot write in {place} (permission denied, or not a folder); "
             f"give an --out you can write to")


def storage_option(*, required: bool = False, help: str = "the study's Optuna storage"):
    """``--storage``: a URL or a file path (one declaration for every command)."""
    default = "" if required else " [default: $HPTRANSFER_HOME/studies.db]"
    return click.option("--storage", required=required, default=None,
                        help=f"{help}: an Optuna storage URL or a file (.db SQLite, .log "
                             f"journal){default}")


model_option = click.option(
    "--model", default=None,
    help="the model family the study was tuned on (a check: refused if it is another) "
         "[default: the study's]")
def data_option(command):
    """``--data`` and how to read it (``--tokenizer``, ``--token-dtype``, ``--data-column``;
    docs/data.md), given to ``command`` as one ``data``: a
    :class:`~hptransfer.data.source.DataSource`, or None for the built-in corpus."""
    import functools

    @functools.wraps(command)
    def wrapped(*args, data, tokenizer, token_dtype, data_column, **kwargs):
        from hptransfer.data.source import DataSource

        given = dict(path=data, tokenizer=tokenizer, token_dtype=token_dtype,
                     column=data_column)
        source = DataSource(**given) if any(v is not None for v in given.values()) else None
        return command(*args, data=source, **kwargs)

    for option in reversed((
        click.option("--data", type=click.Path(), default=None,
                     help="corpus: a text file; token ids (a .bin file, a folder with "
                          "train.bin and val.bin, a Megatron PREFIX.bin with its .idx); a "
                          "Parquet/Arrow table or a datasets folder [default: the built-in "
                          "Python standard library corpus]"),
        click.option("--tokenizer", type=click.Path(), default=None,
                     help="a local tokenizer.json (Hugging Face tokenizers; nothing is "
                          "downloaded) for text, and for bits per byte of token ids "
                          "[default: bytes for text]"),
        click.option("--token-dtype", type=click.Choice(["uint16", "uint32"]), default=None,
                     help="width of the ids in flat token files [default: meta.json's "
                          "dtype beside them, else uint16]"),
        click.option("--data-column", default=None,
                     help="the Parquet/Arrow column to read [default: input_ids, ids or "
                          "tokens, else text]"),
    )):
        wrapped = option(wrapped)
    return wrapped
address_option = click.option(
    "--address", default=None,
    help="--backend ray: the cluster (auto, HOST:PORT, ray://HOST:10001) "
         "[default: a running cluster, else a local one]")

threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="torch threads [default: $HPTRANSFER_THREADS, else all available CPUs]")


def tracker_options(command):
    """``--tracker`` (repeatable) and ``--tracker-dir``: the experiment trackers a command's
    runs are logged to (:mod:`hptransfer.tracking`; docs/trackers.md). An unknown name is a
    usage error (exit 2); a known one that cannot log here is off, with one warning."""
    from hptransfer.tracking.tracker import ENV, TrackerKind

    command = click.option(
        "--tracker-dir", type=click.Path(file_okay=False), default=None,
        help="where local tracker files go: W&B's wandb/, MLflow's mlflow.db (unless "
             "MLFLOW_TRACKING_URI is set), TensorBoard's runs/ [default: the current "
             "directory]")(command)
    return click.option(
        "--tracker", "trackers", multiple=True,
        type=click.Choice([k.value for k in TrackerKind]),
        help=f"log every run to this experiment tracker too (repeat for several; pip install "
             f"'hptransfer[NAME]') [default: ${ENV}, names separated by commas, else "
             f"none]")(command)


def tracking_of(trackers: tuple[str, ...] | None, folder: str | None):
    """The :class:`~hptransfer.tracking.Tracking` a command asks for: ``trackers`` (its
    flags, or a config file's), else ``$HPTRANSFER_TRACKER``'s."""
    from hptransfer.tracking import resolve

    return resolve(tuple(trackers) if trackers else None, folder)

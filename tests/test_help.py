"""The help cannot lie: every option of every command has a description, and the defaults
it prints are the ones the code uses (read from the same objects)."""

from __future__ import annotations

import re

import click
import pytest

from hptransfer.budget import Budget
from hptransfer.cli import main
from hptransfer.hparams import HParams
from hptransfer.spec import ModelSpec
from hptransfer.study.config import BASE_WIDTH_HELP, PROXY_SPEC


def _commands(group: click.Group, prefix: str = ""):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


COMMANDS = dict(_commands(main))


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_option_has_a_description(name):
    missing = [p.opts[0] for p in COMMANDS[name].params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert not missing, f"hptransfer {name}: options without help: {missing}"


def _printed_default(command: click.Command, option: str) -> str:
    param = next(p for p in command.params if option in p.opts)
    if param.show_default and param.default is not None:
        return str(param.default)
    found = re.search(r"\[default: (.*)\]\s*$", param.help or "")
    assert found, f"{option} prints no default"
    return found.group(1)


def _real(value) -> str:
    return str(getattr(value, "value", value))


@pytest.mark.parametrize("command, model, defaults", [
    ("train", ModelSpec(), {}), ("train", HParams(), {}), ("train", Budget(), {}),
    ("describe", ModelSpec(), {}), ("tune", ModelSpec(), PROXY_SPEC),
])
def test_printed_defaults_are_the_real_ones(command, model, defaults):
    """What a command does when an option is not given is what its help says."""
    cmd = COMMANDS[command]
    options = {p.opts[0]: p for p in cmd.params if isinstance(p, click.Option)}
    checked = 0
    for field in type(model).model_fields:
        option = "--" + field.replace("_", "-")
        if option not in options:
            continue
        printed = _printed_default(cmd, option)
        real = defaults.get(field, getattr(model, field))
        if command == "tune" and field == "base_width":  # follows from --widths
            assert printed == BASE_WIDTH_HELP, printed
        elif field in ("attention_scale", "readout_init"):  # follows from --param
            mup, sp = ModelSpec(), ModelSpec(param="sp")
            assert (_real(getattr(mup, field)) in printed and
                    _real(getattr(sp, field)) in printed), (option, printed)
        elif field == "tokens":
            assert Budget().tokens is None and "none" in printed
        else:
            assert printed.startswith(_real(real)), (command, option, printed, real)
        checked += 1
    assert checked >= 5


def _signature_defaults(function) -> dict:
    import inspect

    return {name: p.default for name, p in inspect.signature(function).parameters.items()
            if p.default is not inspect.Parameter.empty}


@pytest.mark.parametrize("command, function, options", [
    ("coord-check", "hptransfer.checks.coord_check:coord_check",
     {"--steps": "steps", "--depth": "depth", "--tolerance": "tolerance", "--seed": "seed"}),
    ("predict", "hptransfer.transfer.predictor:predict_hparams",
     {"--bootstrap": "bootstrap", "--seed": "seed", "--study": "study"}),
    ("confirm", "hptransfer.confirmation.runs:confirm", {"--study": "study"}),
])
def test_command_defaults_are_the_apis(command, function, options):
    """A command given no option does what the Python API does given no argument."""
    import importlib

    module, name = function.split(":")
    api = _signature_defaults(getattr(importlib.import_module(module), name))
    cmd = COMMANDS[command]
    for option, argument in options.items():
        param = next(p for p in cmd.params if option in p.opts)
        assert param.default == api[argument], (command, option, param.default)
    if command == "coord-check":
        widths = next(p for p in cmd.params if "--widths" in p.opts).default
        assert widths == ",".join(map(str, api["widths"]))
    if command == "confirm":
        offsets = next(p for p in cmd.params if "--offsets" in p.opts).default
        assert tuple(float(o) for o in offsets.split(",")) == api["offsets"]

"""Tests for the ``hptransfer`` command line (``hptransfer.cli.main``).

Most tests drive the click group in-process with ``CliRunner``; one runs the installed
console script to prove the entry point in ``pyproject.toml`` works. The µP numbers that
``describe`` prints are checked against docs/spec.md §2 (relative rule, m = 256 / 128 = 2).
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner
from processes import console_script

from hptransfer.cli import main

SUBCOMMANDS = ("train", "describe", "coord-check", "quickstart")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    """An empty current directory, so a test can check the command wrote nothing."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---- help and entry point -------------------------------------------------------------------


def test_group_help_lists_every_command(runner: CliRunner) -> None:
    result = runner.invoke(main, ["--help"])
    assert result.exit_code == 0, result.output
    for name in SUBCOMMANDS:
        assert name in result.output


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(runner: CliRunner, command: str) -> None:
    result = runner.invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("Usage: ")
    assert f" {command} [OPTIONS]" in result.output.splitlines()[0]


def test_train_help_has_an_option_per_config_field(runner: CliRunner) -> None:
    output = runner.invoke(main, ["train", "--help"]).output
    for option in ("--width", "--head-dim", "--param", "--lr", "--weight-decay-rule",
                   "--steps", "--tokens", "--eval-every", "--seed", "--data", "--json"):
        assert option in output
    assert "sp (1/√M) under µP and SP, sp-at-base under mup-abs" in " ".join(output.split())


def test_version(runner: CliRunner) -> None:
    import hptransfer

    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert hptransfer.__version__ in result.output


def test_console_script_entry_point() -> None:
    done = subprocess.run([console_script(), "--help"], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    for name in SUBCOMMANDS:
        assert name in done.stdout


# ---- bad input: exit 2, a message naming the option, nothing written ------------------------


_BAD_INPUT = [
    (["train", "--width", "100", "--out", "X"], ["--width=100", "--head-dim=16"]),
    (["train", "--lr", "-1", "--out", "X"], ["--lr"]),
    (["train", "--lr", "0", "--out", "X"], ["--lr"]),
    (["train", "--param", "foo", "--out", "X"], ["--param", "mup-abs"]),
    (["train", "--steps", "10", "--tokens", "5", "--out", "X"], ["steps", "tokens"]),
    (["train", "--beta2", "1", "--out", "X"], ["--beta2"]),
    (["train", "--lr", "2^x", "--out", "X"], ["--lr", "2^x"]),
    (["describe", "--lr", "2^x"], ["--lr"]),
    (["describe", "--activation", "tanh"], ["--activation", "swiglu"]),
    (["coord-check", "--widths", "32"], ["--widths"]),
    (["coord-check", "--widths", "a,b"], ["--widths"]),
    (["coord-check", "--widths", "32,0"], ["--widths"]),
    (["coord-check", "--widths", "32,64", "--lr", "2^x"], ["--lr"]),
]


@pytest.mark.parametrize(("args", "named"), _BAD_INPUT,
                         ids=[" ".join(args) for args, _ in _BAD_INPUT])
def test_bad_input_exits_2_and_writes_nothing(runner: CliRunner, workdir: Path, text_file: str,
                                              args: list[str], named: list[str]) -> None:
    # --data keeps `train` off the built-in corpus: the check must not depend on it.
    if args[0] == "train":
        args = [*args, "--data", text_file]
    result = runner.invoke(main, args)
    assert result.exit_code == 2, result.output
    for text in named:
        assert text in result.output
    assert "Traceback" not in result.output
    assert list(workdir.iterdir()) == []  # no record, no coord_check/ folder


def test_missing_corpus_exits_2_and_writes_nothing(runner: CliRunner, workdir: Path) -> None:
    result = runner.invoke(main, ["train", "--data", "/does/not/exist", "--out", "X"])
    assert result.exit_code == 2, result.output
    assert "/does/not/exist" in result.output
    assert list(workdir.iterdir()) == []


# ---- numbers like 2^-6 ----------------------------------------------------------------------


@pytest.mark.parametrize("written", ["2^-6", "2**-6", "0.015625", "1.5625e-2"])
def test_power_of_two_learning_rate(runner: CliRunner, written: str) -> None:
    result = runner.invoke(main, ["describe", "--width", "32", "--depth", "1",
                                  "--lr", written])
    assert result.exit_code == 0, result.output
    assert "lr α = 0.015625" in result.output.splitlines()[0]


# ---- describe: docs/spec.md §2 numbers -------------------------------------------------------


def _describe(runner: CliRunner, *args: str) -> dict[str, dict]:
    result = runner.invoke(main, ["describe", "--json", "--width", "256", "--depth", "2",
                                  *args])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert isinstance(rows, list)
    for row in rows:
        assert {"name", "role", "shape", "init_std", "lr_multiplier"} <= row.keys()
    return {row["name"]: row for row in rows}


def _by_role(rows: dict[str, dict], role: str) -> list[dict]:
    return [row for row in rows.values() if row["role"] == role]


def test_describe_mup_relative_rule(runner: CliRunner) -> None:
    rows = _describe(runner, "--param", "mup")
    m = 256 / 128
    embedding = rows["embed.weight"]
    assert (embedding["role"], embedding["shape"]) == ("embedding", [256, 256])
    assert (embedding["init_std"], embedding["lr_multiplier"]) == (1.0, 1.0)

    hidden = _by_role(rows, "hidden")
    assert len(hidden) == 2 * 5  # wq, wkv, wo, w_in, w_out per block
    for row in hidden:
        fan_in = row["shape"][1]
        assert row["init_std"] == pytest.approx(1 / math.sqrt(fan_in)), row["name"]
        assert row["lr_multiplier"] == pytest.approx(1 / m), row["name"]
    assert rows["blocks.0.mlp.w_out"]["shape"] == [256, 4 * 256]
    assert rows["blocks.0.mlp.w_out"]["init_std"] == pytest.approx(1 / math.sqrt(4 * 256))

    readout = rows["readout.weight"]
    assert readout["role"] == "readout"
    assert readout["init_std"] == pytest.approx(1 / math.sqrt(256))  # SP's 1/√M
    assert readout["lr_multiplier"] == pytest.approx(1 / m)
    assert _by_role(rows, "gain") == [] and _by_role(rows, "bias") == []


def test_describe_mup_absolute_rule(runner: CliRunner) -> None:
    rows = _describe(runner, "--param", "mup-abs")
    assert rows["embed.weight"]["lr_multiplier"] == 1.0
    for row in [*_by_role(rows, "hidden"), *_by_role(rows, "readout")]:
        assert row["lr_multiplier"] == pytest.approx(1 / row["shape"][1]), row["name"]
    assert rows["blocks.1.mlp.w_out"]["lr_multiplier"] == pytest.approx(1 / (4 * 256))
    assert rows["blocks.1.attn.wq"]["lr_multiplier"] == pytest.approx(1 / 256)
    assert rows["readout.weight"]["lr_multiplier"] == pytest.approx(1 / 256)
    assert rows["readout.weight"]["init_std"] == pytest.approx(1 / math.sqrt(128) / 2)


def test_describe_sp(runner: CliRunner) -> None:
    rows = _describe(runner, "--param", "sp")
    assert {row["lr_multiplier"] for row in rows.values()} == {1.0}
    assert rows["readout.weight"]["init_std"] == pytest.approx(1 / math.sqrt(256))
    for row in _by_role(rows, "hidden"):
        assert row["init_std"] == pytest.approx(1 / math.sqrt(row["shape"][1]))


def test_describe_zero_query_init(runner: CliRunner) -> None:
    rows = _describe(runner, "--query-init", "zero")
    for block in range(2):
        assert rows[f"blocks.{block}.attn.wq"]["init_std"] == 0.0
        assert rows[f"blocks.{block}.attn.wkv"]["init_std"] == pytest.approx(1 / 16)


def test_describe_vector_norm_gain(runner: CliRunner) -> None:
    rows = _describe(runner, "--norm-gain", "vector")
    gains = _by_role(rows, "gain")
    assert len(gains) == 2 * 2 + 1  # two per block and the final norm
    for row in gains:
        assert row["shape"] == [256]
        assert row["lr_multiplier"] == 1.0
    assert "final_norm.gain" in rows


def test_describe_text_table(runner: CliRunner) -> None:
    result = runner.invoke(main, ["describe", "--width", "64", "--depth", "1", "--param", "sp"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("sp: width 64 (m = 0.5), depth 1, heads 4 × 16")
    assert "attention scale 1/sqrt(D)" in lines[0]
    assert any(line.startswith("readout.weight") for line in lines)


# ---- train: a tiny real run -----------------------------------------------------------------


def test_train_tiny_run(runner: CliRunner, workdir: Path, text_file: str) -> None:
    out = workdir / "tmp" / "rec.json"  # parent folder does not exist yet
    result = runner.invoke(main, [
        "train", "--data", text_file, "--width", "32", "--depth", "1", "--seq-len", "32",
        "--batch-size", "4", "--steps", "6", "--eval-every", "3", "--eval-tokens", "256",
        "--base-width", "32", "--lr", "2^-6", "--threads", "1", "--json", "--out", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["status"] == "complete"
    assert record["reason"] is None
    assert [point["step"] for point in record["val_curve"]] == [3, 6]
    assert record["final_val_loss"] == record["val_curve"][-1]["loss"]
    assert (record["steps"], record["planned_steps"]) == (6, 6)
    assert record["tokens_seen"] == 6 * 4 * 32
    assert record["hparams"]["lr"] == 0.015625
    assert record["spec"]["vocab"] == 256  # the byte corpus's vocabulary
    assert record["corpus"]["vocab_size"] == 256
    assert record["provenance"]["threads"] == 1
    assert out.read_text() == result.stdout.rstrip("\n")
    # only the record was written, atomically (no temporary file left behind)
    assert sorted(p.name for p in out.parent.iterdir()) == ["rec.json"]


def test_train_text_summary(runner: CliRunner, workdir: Path, text_file: str) -> None:
    result = runner.invoke(main, [
        "train", "--data", text_file, "--width", "32", "--depth", "1", "--seq-len", "16",
        "--batch-size", "2", "--steps", "2", "--eval-tokens", "64", "--base-width", "32",
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("complete: validation loss ")
    assert "after 2 steps" in result.output
    assert list(workdir.iterdir()) == []  # no --out: nothing written

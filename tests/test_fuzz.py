"""Every subcommand, every option, bad values: exit 2, no traceback, and the storage and the
outputs byte-identical (docs/reliability.md). Each case changes one option of a command line
that is otherwise valid, so a bad value that slipped through would show as a run.

The bad values follow each option's type (a count of 0 or -3, a non-number, NaN, an unknown
choice), plus the inputs a cluster or a user can hand hptransfer: bad storages, bad data,
bad config files, bad names (control characters, the reserved ``.confirm``), unwritable
outputs and checkpoint folders, LR offsets and devices, model strings that do not resolve.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from snapshot import digest

from hptransfer.cli import main
from hptransfer.cli.options import NUMBER

TINY = ["--depth", "1", "--seq-len", "32", "--base-width", "32", "--head-dim", "16"]
SKIP = {"--help", "--json", "--quiet", "--markdown", "--from-results", "--baseline",
        "--version"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, text_file) -> dict:
    """A tiny study, the inputs to break, and an output folder that must stay empty."""
    folder = tmp_path_factory.mktemp("fuzz")
    study = folder / "s.db"
    result = CliRunner().invoke(main, [
        "tune", "--widths", "32,64", "--trials", "3", "--steps", "3", *TINY, "--lr-range",
        "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off", "--data",
        text_file, "--storage", str(study), "--study", "s", "--threads", "1"])
    assert result.exit_code == 0, result.output
    (folder / "dir.db").mkdir()
    (folder / "notes.db").write_text("not a database\n")
    (folder / "torn.log").write_bytes(b'{"op_code": 0, "worker_id": "x"')
    (folder / "bad.toml").write_text("[tune\n")
    (folder / "latin.toml").write_bytes("[tune]\nstudy = 'caf\xe9'\n".encode("latin-1"))
    (folder / "list.yaml").write_text("- a\n- b\n")
    (folder / "binary.txt").write_bytes(b"\x00\x01\x02" * 1000)
    studies = folder / "studies"
    studies.mkdir()
    (studies / "setting.toml").write_text(
        "widths = [32, 64]\nlr_exponents = [-8, -6]\nsteps = 2\neval_tokens = 256\n\n"
        "[spec]\ndepth = 1\nseq_len = 32\nbase_width = 32\n\n[hparams]\nbatch_size = 2\n")
    (studies / "tiny.toml").write_text('title = "tiny"\npaper = "absent"\n')
    out = folder / "out"
    return {"study": study, "folder": folder, "out": out, "text": text_file,
            "studies": studies}


def _bases(w: dict) -> dict[str, list[str]]:
    """A valid command line per command: one option of it is replaced per case."""
    study, out, text = str(w["study"]), str(w["out"]), w["text"]
    return {
        "train": ["--width", "32", *TINY, "--steps", "2", "--batch-size", "2", "--data", text,
                  "--out", f"{out}/run.json", "--threads", "1"],
        "describe": ["--width", "64"],
        "coord-check": ["--widths", "32,64", "--steps", "2", "--out", out, "--data", text,
                        "--threads", "1"],
        "quickstart": ["--out", out, "--steps", "2", "--threads", "1"],
        "tune": ["--widths", "32", "--trials", "1", "--steps", "2", *TINY, "--data", text,
                 "--storage", f"{out}/t.db", "--study", "t", "--threads", "1"],
        "worker": ["--study", "s", "--storage", study, "--trials", "3", "--quiet"],
        "status": ["--study", "s", "--storage", study],
        "plot": ["--study", "s", "--storage", study, "--out", out],
        "predict": ["--study", "s", "--storage", study, "--target-width", "128", "--out",
                    f"{out}/p.json"],
        "confirm": ["--study", "s", "--storage", study, "--target-width", "64", "--offsets",
                    "-1,0", "--threads", "1"],
        "report": ["--study", "s", "--storage", study, "--out", out],
        "score": ["--study", "s", "--storage", study, "--target-width", "64", "--points", "3",
                  "--threads", "1"],
        "study run": [str(w["studies"] / "tiny.toml"), "--storage", f"{out}/r.db",
                      "--results", out, "--threads", "1"],
        "study table": ["--studies", str(w["studies"]), "--out", out],
    }


CREATES = {"tune", "study run"}  # may create a storage where none is; the others need one
READS = {"status", "plot", "predict", "report", "study table"}  # a cut journal is readable


def _special(w: dict, command: str) -> dict[str, list[str]]:
    """Bad inputs by option name (some are bad only for some commands)."""
    f = w["folder"]
    storages = ["foo://x", "sqlite://", "sqlite:/x.db", f"{f}/dir.db", f"{f}/notes.db",
                "/proc/nope/x.db"]
    if command not in CREATES:
        storages.append(f"{f}/missing/none.db")  # joining or reading: it must exist
    if command not in READS:
        storages.append(f"{f}/torn.log")  # writing after a cut record would corrupt it
    workers = ["0", "-2", "many"]  # locally any positive count (or auto) is fine
    return {
        "--storage": storages,
        "--data": ["/nonexistent/corpus.txt", f"{f}/binary.txt", f"{f}/dir.db"],
        # a tokenizer that is missing or does not load; a column of a text file (not a table)
        "--tokenizer": [f"{f}/missing.json", f"{f}/bad.toml"],
        "--data-column": ["text"],
        "--config": [f"{f}/missing.toml", f"{f}/bad.toml", f"{f}/latin.toml",
                     f"{f}/list.yaml"],
        # control characters (a trailing newline passed a non-full match once) and the
        # reserved suffix of confirmation studies
        "--study": ["a/b", "../../x", "", "s\n", "a\tb", "a\x1b[31m", "s.confirm"],
        "--out": ["/proc/nope", f"{f}/notes.db/x"],
        "--results": ["/proc/nope"],
        "--model": ["nope", f"{f}/missing.py:make_model", "hf-bert"],
        "--widths": ["a,b", "0", "-32"],
        "--offsets": ["1,2", "x", "0,inf", "0,nan", "-inf,0", "0,9", "-8.5,0"],
        "--device": ["tpu", "CPU", "cuda:abc", "cuda:-1", "", "mps", "cpu "],
        "--checkpoint-dir": ["/proc/ck", f"{f}/notes.db/ck"],
        "--checkpoint-minutes": ["x", "nan", "inf", "2^x", "-1"],
        "--lr-range": ["1", "0.1,0.01", "x,y"],
        "--weight-decay-range": ["1", "0.1,0.01"],
        "--batch-sizes": ["3,5", "x"],
        "--target-width": ["0", "40"],
        "--target-tokens": ["0", "1.5", "1e30"],
        "--horizon-exponent": ["3", "-1"],
        "--setting": [f"{f}/missing.toml", f"{f}/bad.toml"],
        "--studies": [f"{f}/missing"],
        "--address": ["ray://nowhere:1"],
        "--cpus-per-worker": ["0", "2"],
        "--workers": workers,
    }


def _by_type(param: click.Option) -> list[str]:
    kind = param.type
    if isinstance(kind, click.Choice):
        return ["nope"]
    if isinstance(kind, click.IntRange):
        bad = ["x", "1.5"]
        if kind.min is not None:
            bad += [str(kind.min - 1), str(kind.min - 7)]
        return bad
    if isinstance(kind, click.FloatRange):
        return ["x", "nan"] + ([str(kind.min - 1)] if kind.min is not None else [])
    if kind is NUMBER:
        return ["x", "nan", "2^x"]
    if kind == click.INT:
        return ["x", "1.5"]
    if kind == click.FLOAT:
        return ["x"]
    return []


# options whose type takes any value, and where a "bad" one is fine (a seed, a name)
UNCHECKED = {"--seed", "--address", "--eval-every", "--threads"}


def _cases() -> list[tuple[str, str, str]]:
    commands = {"study run": main.commands["study"].commands["run"],
                "study table": main.commands["study"].commands["table"],
                **{n: c for n, c in main.commands.items() if n != "study"}}
    fake = {"folder": Path("/F"), "study": Path("/S"), "out": Path("/O"), "text": "/T",
            "studies": Path("/D")}
    cases = []
    for name, command in sorted(commands.items()):
        special = _special(fake, name)
        for param in command.params:
            if not isinstance(param, click.Option) or param.is_flag:
                continue
            option = param.opts[0]
            if option in SKIP:
                continue
            values = special.get(option) or ([] if option in UNCHECKED else _by_type(param))
            cases += [(name, option, value) for value in values]
    return cases


CASES = _cases()


def test_every_command_is_fuzzed():
    assert {c for c, _, _ in CASES} >= {"train", "describe", "coord-check", "quickstart",
                                         "tune", "worker", "status", "plot", "predict",
                                         "confirm", "report", "study run", "study table"}
    assert len(CASES) > 200


def _with(base: list[str], option: str, value: str) -> list[str]:
    args = list(base)
    if option in args:
        args[args.index(option) + 1] = value
    else:
        args += [option, value]
    return args


@pytest.mark.parametrize("command, option, value", CASES,
                         ids=[f"{c}{o}={v}" for c, o, v in CASES])
def test_a_bad_value_exits_2_and_changes_nothing(command, option, value, world, monkeypatch,
                                                tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    fake = Path("/F")
    value = value.replace(str(fake), str(world["folder"]))
    args = [*command.split(), *_with(_bases(world)[command], option, value)]
    study, out = world["study"], world["out"]
    before = (digest(study), out.exists() and digest(out))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, f"{args}\n{result.output}"
    assert "Traceback" not in result.output, result.output
    assert (digest(study), out.exists() and digest(out)) == before
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # no ./sqlite: or home

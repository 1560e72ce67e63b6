"""Hostile inputs, round three (issue 22): input that used to give a wrong result without a
word, poison the storage for every later command, or fail only after the compute. Each is
refused before anything runs (exit 2, one message, the storage byte-identical) or, when
already in a storage, reported and skipped."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from snapshot import digest
from tiny import TINY_FLAGS as TINY
from tiny import run_cli as run


@pytest.fixture(scope="module")
def study(tmp_path_factory, text_file) -> Path:
    """A tiny study (widths 32 and 64, three LRs each, 3 steps) in a SQLite file."""
    storage = tmp_path_factory.mktemp("study") / "s.db"
    run(["tune", "--widths", "32,64", "--trials", "3", "--steps", "3", *TINY, "--lr-range",
         "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off", "--data",
         text_file, "--storage", str(storage), "--study", "s", "--threads", "1"], code=0)
    return storage


@pytest.fixture
def copy(study, tmp_path, monkeypatch) -> Path:
    """A copy of the study to change; checkpoints and the default storage under tmp_path."""
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    path = tmp_path / "s.db"
    path.write_bytes(study.read_bytes())
    return path


def confirm_args(storage: Path, *extra: str) -> list[str]:
    return ["confirm", "--study", "s", "--storage", str(storage), "--target-width", "64",
            "--offsets", "-1,0", "--threads", "1", "--workers", "1", *extra]


# ---- 4. offsets: refused before anything is written; a bad record is skipped -----------------

@pytest.mark.parametrize("offsets", ["0,inf", "0,nan", "-inf,0", "0,9", "-20,0", "0,1e400"])
def test_offsets_that_are_not_finite_or_absurd_exit_2_and_write_nothing(copy, offsets):
    before = digest(copy)
    result = run(confirm_args(copy, "--offsets", offsets))
    assert "within ±8" in result.output
    assert digest(copy) == before


def test_the_api_refuses_the_same_offsets(copy):
    from hptransfer.confirmation.runs import confirm
    from hptransfer.errors import ConfigError

    before = digest(copy)
    for offsets in [(0.0, float("inf")), (0.0, float("nan")), (0.0, 8.5)]:
        with pytest.raises(ConfigError, match="within ±8"):
            confirm(64, study="s", storage=str(copy), offsets=offsets, threads=1, workers=1)
    assert digest(copy) == before


def test_the_prediction_alone_is_an_api_run_and_a_cli_refusal(copy):
    """A benchmark trains only the predicted point (offset 0) through the API; the command
    line asks for a neighbour too, since its verdict compares them."""
    from hptransfer.confirmation.runs import confirm

    before = digest(copy)
    result = run(confirm_args(copy, "--offsets", "0"))
    assert "at least one neighbour" in result.output and digest(copy) == before
    found = confirm(64, study="s", storage=str(copy), offsets=(0.0,), threads=1, workers=1)
    assert [r.offset for r in found.runs] == [0.0]


def _add_unreadable_trial(storage: Path, study_name: str) -> None:
    """A finished trial whose hparams read back as an LR of null: what a run at lr = inf
    wrote before offsets were checked (pydantic writes inf as null)."""
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = optuna.load_study(study_name=study_name, storage=f"sqlite:///{storage}")
    target.add_trial(create_trial(
        state=TrialState.COMPLETE, value=3.0, params={"lr": 0.01},
        distributions={"lr": FloatDistribution(1e-6, 1.0, log=True)},
        user_attrs={"hparams": json.dumps({"lr": None, "batch_size": 4}), "status": "complete",
                    "final_val_loss": 3.0, "width": int(study_name.rpartition(".w")[2])}))


def test_a_record_that_does_not_read_back_is_reported_and_skipped(copy, tmp_path):
    run(confirm_args(copy, "--json"), code=0)
    _add_unreadable_trial(copy, "s.w32")
    _add_unreadable_trial(copy, "s.confirm.w64")
    result = run(["predict", "--study", "s", "--storage", str(copy), "--target-width", "128"],
                 code=0)
    assert "has a record that cannot be read" in result.output and "skipped" in result.output
    run(["status", "--study", "s", "--storage", str(copy)], code=0)
    run(["report", "--study", "s", "--storage", str(copy), "--out", str(tmp_path / "r")],
        code=0)
    again = json.loads(run(confirm_args(copy, "--json"), code=0).stdout)
    assert [r["status"] for r in again["runs"]] == ["complete", "complete"]


# ---- 5. a study name ending in .confirm is reserved ------------------------------------------

def test_a_study_name_ending_in_confirm_is_reserved(copy, tmp_path, text_file):
    storage = tmp_path / "new.db"
    result = run(["tune", "--widths", "32", "--trials", "1", "--steps", "2", *TINY, "--data",
                  text_file, "--storage", str(storage), "--study", "s.confirm"])
    assert "reserved" in result.output and "'s-confirm'" in result.output
    assert not storage.exists()
    before = digest(copy)
    result = run(["confirm", "--study", "s.confirm", "--storage", str(copy),
                  "--target-width", "64"])
    assert "reserved" in result.output and digest(copy) == before


# ---- 7, 8. checkpoint folder and device: refused before any run ------------------------------

@pytest.mark.parametrize("folder", ["/proc/ck", "{copy}/ck"])  # (a file: click says so)
def test_an_unwritable_checkpoint_dir_is_refused_before_any_run(copy, folder):
    before = digest(copy)
    result = run(confirm_args(copy, "--checkpoint-dir", folder.format(copy=copy)))
    assert "cannot write checkpoints" in result.output
    assert digest(copy) == before


@pytest.mark.parametrize("device", ["tpu", "CPU", "cuda:abc", "cuda:-1", "", "mps", " cpu"])
def test_a_device_that_is_not_one_exits_2_with_the_accepted_forms(copy, device):
    before = digest(copy)
    result = run(confirm_args(copy, "--device", device))
    assert "cpu or cuda" in result.output
    assert digest(copy) == before


# ---- 11. a checkpoint belongs to its storage and study ---------------------------------------

def test_a_checkpoint_of_another_storage_is_not_resumed(copy, tmp_path):
    from hptransfer.confirmation.runs import confirm
    from hptransfer.study.records import records_of
    from hptransfer.training.execution import Checkpointing, Execution

    # kept checkpoints after every step: the last of each run, after step 2 of 3, stays
    execution = Execution(checkpoint=Checkpointing(folder=tmp_path / "ck", every_steps=1,
                                                   keep=True))
    other = tmp_path / "other.db"
    other.write_bytes(copy.read_bytes())
    for storage in (copy, other):
        confirm(64, study="s", storage=str(storage), offsets=(0.0, 1.0), threads=1, workers=1,
                execution=execution)
    assert len(list((tmp_path / "ck").glob("*/step-*"))) == 4  # two runs in each storage
    runs = records_of(optuna.load_study(study_name="s.confirm.w64",
                                        storage=f"sqlite:///{other}"))
    assert [r.resumed_at for r in runs] == [(), ()]


# ---- 12. minor: a key in the wrong section, a factory beside its modules ---------------------

@pytest.mark.parametrize("text, where", [("[tune]\nsteps = 5\n", "steps in [budget]"),
                                         ("[spec]\nlr = 0.01\n", "lr in [hparams]")],
                         ids=["tune-steps", "spec-lr"])
def test_a_config_key_in_the_wrong_section_names_its_section(tmp_path, text_file, text, where):
    config = tmp_path / "c.toml"
    config.write_text(text)
    storage = tmp_path / "c.db"
    result = run(["tune", "--config", str(config), "--widths", "32", "--trials", "1",
                  "--data", text_file, "--storage", str(storage)])
    assert where in result.output and "Extra inputs" not in result.output
    assert not storage.exists()


def test_a_factory_file_imports_a_module_beside_it(tmp_path):
    import sys

    (tmp_path / "blocks_beside.py").write_text(
        "from torch import nn\n\n\ndef block(width):\n    return nn.Linear(width, width)\n")
    (tmp_path / "made.py").write_text(
        "import torch\nfrom torch import nn\n\nfrom blocks_beside import block\n\n\n"
        "class Net(nn.Module):\n"
        "    def __init__(self, width, vocab):\n"
        "        super().__init__()\n"
        "        self.embed, self.block = nn.Embedding(vocab, width), block(width)\n"
        "        self.head = nn.Linear(width, vocab, bias=False)\n\n"
        "    def forward(self, idx):\n"
        "        return self.head(torch.relu(self.block(self.embed(idx))))\n\n\n"
        "def make_model(width, depth=1, vocab=256):\n    return Net(width, vocab)\n")
    path = list(sys.path)
    try:
        result = run(["describe", "--model", f"{tmp_path / 'made.py'}:make_model", "--width",
                      "64", "--base-width", "32", "--json"], code=0)
    finally:
        sys.modules.pop("blocks_beside", None)
    assert {row["role"] for row in json.loads(result.stdout)} >= {"embedding", "readout"}
    assert sys.path == path  # the folder was on the import path only while loading


# ---- 9. a full disk is one error line, and the storage stays whole ---------------------------

def _full_after(monkeypatch, writes: int, marker: bytes) -> None:
    """From the ``writes``-th write of data holding ``marker`` on, the disk is full: half
    the data is written, then ENOSPC, as a kernel does when the last blocks run out."""
    import errno
    import os

    real, seen = os.write, []

    def write(descriptor, data):
        if marker in bytes(data):
            seen.append(1)
            if len(seen) >= writes:
                real(descriptor, bytes(data)[:len(data) // 2])
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(descriptor, data)

    monkeypatch.setattr(os, "write", write)


def tune_args(text_file: str, storage: Path, trials: int) -> list[str]:
    return ["tune", "--widths", "32", "--trials", str(trials), "--steps", "2", *TINY,
            "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off",
            "--data", text_file, "--storage", str(storage), "--study", "j", "--threads", "1",
            "--workers", "1"]


def test_a_journal_that_fills_mid_tune_is_an_error_line_and_stays_whole(
        tmp_path, text_file, monkeypatch):
    journal = tmp_path / "j.log"
    run(tune_args(text_file, journal, 1), code=0)
    _full_after(monkeypatch, 3, b'"op_code"')
    result = run(tune_args(text_file, journal, 3))
    assert f"the disk holding the storage {journal} is full" in result.output
    assert result.output.count("error:") == 1
    data = journal.read_bytes()
    assert data.endswith(b"\n") and all(json.loads(line) for line in data.splitlines())
    monkeypatch.undo()  # space freed: the same command goes on from what was recorded
    run(["status", "--study", "j", "--storage", str(journal)], code=0)
    run(tune_args(text_file, journal, 3), code=0)


def test_a_full_sqlite_disk_is_named_not_called_data_too_long(copy, text_file):
    """SQLite on a full disk says "database or disk is full", which Optuna reported as data
    "exceeding max length". A full disk is simulated by SQLite's own page limit: the file
    cannot grow by a page."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    with sqlite3.connect(copy) as connection:
        connection.execute("VACUUM")
        pages = connection.execute("PRAGMA page_count").fetchone()[0]

    def full(dbapi_connection, _record) -> None:
        dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    event.listen(Engine, "connect", full)
    try:
        result = run(["tune", "--widths", "32,64", "--trials", "5", "--steps", "3", *TINY,
                      "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off",
                      "--batch-sizes", "off", "--data", text_file, "--storage", str(copy),
                      "--study", "s", "--threads", "1", "--workers", "1"])
    finally:
        event.remove(Engine, "connect", full)
    assert f"the disk holding the storage {copy} is full" in result.output
    assert "max length" not in result.output and result.output.count("error:") == 1
    run(["status", "--study", "s", "--storage", str(copy)], code=0)


@pytest.mark.parametrize("command", ["predict", "train", "plot", "report"])
def test_an_output_on_a_full_disk_is_an_error_line_and_leaves_nothing(
        copy, tmp_path, text_file, monkeypatch, command):
    """Each file is written to /dev/full (ENOSPC, as a full disk), from the ``fails``-th on:
    plot and report write several files, and the first ones written must go too."""
    import os
    import tempfile

    out = tmp_path / "out" / "deeper"
    args = {"predict": ["predict", "--study", "s", "--storage", str(copy), "--target-width",
                        "128", "--out", f"{out}/p.json"],
            "train": ["train", "--width", "32", *TINY, "--steps", "2", "--batch-size", "2",
                      "--data", text_file, "--out", f"{out}/run.json", "--threads", "1"],
            "plot": ["plot", "--study", "s", "--storage", str(copy), "--out", str(out)],
            "report": ["report", "--study", "s", "--storage", str(copy), "--out", str(out)]}
    fails = 2 if command in ("plot", "report") else 1
    real, calls = tempfile.mkstemp, []

    def mkstemp(*args, **kwargs):
        descriptor, name = real(*args, **kwargs)
        calls.append(name)
        if len(calls) < fails:
            return descriptor, name
        os.close(descriptor)
        return os.open("/dev/full", os.O_WRONLY), name

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    before = digest(copy)
    result = run(args[command])
    assert "the disk is full" in result.output and result.output.count("error:") == 1
    assert not (tmp_path / "out").exists()  # neither the files written nor the folders
    assert digest(copy) == before

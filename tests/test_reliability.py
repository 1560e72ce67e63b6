"""Bad storage, bad data and bad names never crash, never lose a run and never run code
(docs/reliability.md): one test per problem found by trying the landed code as a new and as
a hostile user would. Each bad input exits 2 (or the documented code) with one message, no
traceback, and leaves the storage and the outputs byte-identical."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
from snapshot import digest
from tiny import TINY_FLAGS as TINY
from tiny import run_cli as run

from hptransfer.errors import CorpusError, StorageError
from hptransfer.study.storage import Access, normalize, open_storage


def tune_args(text_file: str, storage: str, *extra: str) -> list[str]:
    return ["tune", "--widths", "32,64", "--trials", "3", "--steps", "3", *TINY,
            "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off",
            "--data", text_file, "--storage", storage, "--study", "s",
            "--threads", "1", *extra]


@pytest.fixture(scope="module")
def study(tmp_path_factory, text_file) -> Path:
    """A tiny study (widths 32 and 64, three LRs each) in a SQLite file."""
    folder = tmp_path_factory.mktemp("study")
    storage = folder / "s.db"
    run(tune_args(text_file, str(storage)), code=0)
    return storage


# ---- 1. storage errors are messages, and nothing is modified ---------------------------------

def _damaged(tmp_path: Path, study: Path, how: str) -> Path:
    data = bytearray(study.read_bytes())
    if how == "header":
        data[:16] = b"garbage garbage!"
    elif how == "middle":
        page = 4096
        for offset in range(2 * page, len(data) - page, page):
            data[offset + 20:offset + 200] = os.urandom(180)
    elif how == "truncated":
        data = data[:len(data) // 2 + 100]
    path = tmp_path / f"{how}.db"
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("how, message", [("header", "not an SQLite database"),
                                          ("middle", "corrupted"),
                                          ("truncated", "corrupted")])
@pytest.mark.parametrize("command", ["status", "predict", "tune"])
def test_a_damaged_sqlite_file_is_reported_and_never_modified(how, message, command, study,
                                                              tmp_path, text_file):
    path = _damaged(tmp_path, study, how)
    before = digest(path)
    args = {"status": ["status", "--study", "s", "--storage", str(path)],
            "predict": ["predict", "--study", "s", "--storage", str(path), "--target-width",
                        "128"],
            "tune": tune_args(text_file, str(path))}[command]
    result = run(args)
    assert message in result.output and str(path) in result.output
    if how != "header":
        assert ".recover" in result.output  # the recovery step
    assert digest(path) == before


_HALF_WRITTEN = """
import os, signal, sqlite3, sys
connection = sqlite3.connect(sys.argv[1])
connection.execute("PRAGMA cache_size=1")  # spill pages into the file mid-transaction
connection.execute("BEGIN")
connection.execute("CREATE TABLE scratch (x TEXT)")
for _ in range(2000):
    connection.execute("INSERT INTO scratch VALUES (?)", ("y" * 500,))
os.kill(os.getpid(), signal.SIGKILL)  # the transaction is left half-written on disk
"""


@pytest.mark.parametrize("command", ["status", "tune"])
def test_a_transaction_a_killed_process_left_is_rolled_back_not_called_corrupt(
        command, study, tmp_path, text_file):
    """A process killed inside a write transaction leaves a hot journal beside the file.
    Every command opens the storage as SQLite's crash recovery does (rolling the unfinished
    transaction back), never as a corruption: a kill -9 mid-write costs nothing committed."""
    path = tmp_path / "s.db"
    path.write_bytes(study.read_bytes())
    killed = subprocess.run([sys.executable, "-c", _HALF_WRITTEN, str(path)], timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert path.with_name("s.db-journal").stat().st_size > 0  # hot: the case under test
    expected = run(["status", "--study", "s", "--storage", str(study), "--json"],
                   code=0).output
    args = {"status": ["status", "--study", "s", "--storage", str(path), "--json"],
            "tune": tune_args(text_file, str(path))}[command]
    result = run(args, code=0)
    if command == "status":
        assert result.output == expected
    import sqlite3

    tables = {row[0] for row in sqlite3.connect(path).execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "scratch" not in tables  # rolled back to what was committed


@pytest.mark.parametrize("storage, message", [
    ("foo://x", "unknown kind 'foo'"),
    ("sqlite://", "in memory"),
    ("sqlite:///:memory:", "in memory"),
    ("sqlite:/x.db", "too few slashes"),
    ("/proc/hptransfer/x.db", "cannot create the storage"),
    ("postgresql://user:secret@127.0.0.1:9/nodb", "cannot connect to the storage"),
])
def test_a_storage_that_cannot_be_used_is_refused_with_the_fix(storage, message, tmp_path,
                                                               text_file, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if storage.startswith("postgresql"):
        pytest.importorskip("psycopg2")
    result = run(tune_args(text_file, storage))
    assert message in result.output
    assert "secret" not in result.output  # a password is never printed
    assert not any(tmp_path.iterdir())  # no ./sqlite: folder, no file


def test_a_folder_or_a_non_sqlite_file_is_refused(tmp_path, text_file):
    folder = tmp_path / "here.db"
    folder.mkdir()
    assert "is a folder" in run(tune_args(text_file, str(folder))).output
    other = tmp_path / "notes.db"
    other.write_text("not a database\n")
    before = digest(other)
    assert "not an SQLite database" in run(["status", "--storage", str(other)]).output
    assert digest(other) == before


def test_a_corrupted_journal_is_reported(tmp_path, text_file):
    path = tmp_path / "s.log"
    run(tune_args(text_file, str(path), "--widths", "32", "--trials", "1"), code=0)
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"{not json"
    path.write_bytes(b"\n".join(lines))
    before = digest(path)
    result = run(["status", "--study", "s", "--storage", str(path)])
    assert "corrupted at line 3" in result.output and digest(path) == before


# ---- 2. no silent loss or misplacement --------------------------------------------------------

def test_journal_urls_are_file_urls_and_plain_paths_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert normalize("journal:///abs/studies.log") == "journal:///abs/studies.log"
    assert normalize("journal:////abs/studies.log") == "journal:///abs/studies.log"  # older
    assert normalize("s.log") == f"journal://{tmp_path / 's.log'}"
    assert normalize("sqlite:///rel.db") == f"sqlite:///{tmp_path / 'rel.db'}"
    assert normalize("sqlite:////abs/x.db") == "sqlite:////abs/x.db"


def test_read_only_commands_create_nothing(tmp_path, monkeypatch, study):
    home = tmp_path / "home"
    monkeypatch.setenv("HPTRANSFER_HOME", str(home))
    assert "no studies yet" in run(["status"], code=0).output
    run(["status", "--study", "s"])
    run(["worker", "--study", "s", "--storage", str(tmp_path / "none.db"), "--trials", "1"])
    run(["predict", "--study", "s", "--target-width", "128"])
    run(["plot", "--study", "s", "--out", str(tmp_path / "plots")])
    assert not home.exists() and not (tmp_path / "none.db").exists()
    assert not (tmp_path / "plots").exists()
    with pytest.raises(StorageError, match="no storage at"):
        open_storage(str(tmp_path / "x.log"), Access.READ)


# ---- 3. a torn journal is read, never written after -------------------------------------------

def test_a_torn_journal_is_read_but_never_appended_to(tmp_path, text_file):
    path = tmp_path / "s.log"
    run(tune_args(text_file, str(path), "--widths", "32", "--trials", "1"), code=0)
    data = path.read_bytes()
    path.write_bytes(data[:-25])  # a crash mid-write cut the last record
    before = digest(path)
    assert "s: widths 32" in run(["status", "--storage", str(path)], code=0).output
    result = run(tune_args(text_file, str(path), "--widths", "32", "--trials", "2"))
    assert "ends in a cut record" in result.output and "head -n" in result.output
    assert digest(path) == before


# ---- 4. many processes create one new SQLite file at once -------------------------------------

CREATE = """
import sys, time
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
from hptransfer.study.storage import open_storage
import optuna
storage = open_storage(sys.argv[1])
optuna.create_study(study_name=f"p{sys.argv[3]}", storage=storage)
"""


@pytest.mark.parametrize("attempt", range(4))
def test_processes_starting_together_on_a_new_sqlite_file_all_succeed(attempt, tmp_path):
    import time

    url = f"sqlite:///{tmp_path / 'new.db'}"
    start = time.time() + 3.0  # every process imports, then all open at the same instant
    processes = [subprocess.Popen([sys.executable, "-c", CREATE, url, str(start), str(i)],
                                  stderr=subprocess.PIPE, text=True) for i in range(5)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 5, "\n".join(errors)
    assert len(optuna.get_all_study_summaries(url)) == 5


READ = """
import sys, time
start = float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
from hptransfer.errors import StorageError
from hptransfer.study.storage import Access, open_storage
while True:  # a status polling a tune that is starting: nothing there yet, then its record
    try:
        open_storage(sys.argv[1], Access.READ)
        break
    except StorageError as error:
        if "nothing is recorded" not in str(error) and "no storage at" not in str(error):
            raise
"""


@pytest.mark.parametrize("attempt", range(2))
def test_readers_polling_a_sqlite_file_being_created_break_nothing(attempt, tmp_path):
    """A reader opening the file while a tune creates its schema once made the tune fail
    ("table trial_params already exists"): Optuna creates missing tables when it opens."""
    import time

    url = f"sqlite:///{tmp_path / 'new.db'}"
    start = time.time() + 3.0
    scripts = [CREATE] * 3 + [READ] * 3
    processes = [subprocess.Popen([sys.executable, "-c", script, url, str(start), str(i)],
                                  stderr=subprocess.PIPE, text=True)
                 for i, script in enumerate(scripts)]
    errors = [p.communicate(timeout=120)[1] for p in processes]
    assert [p.returncode for p in processes] == [0] * 6, "\n".join(errors)
    assert len(optuna.get_all_study_summaries(url)) == 3


def test_a_reader_waits_for_a_schema_being_created_and_never_creates_one(tmp_path):
    import fcntl
    import sqlite3
    import threading

    path = tmp_path / "other.db"
    with sqlite3.connect(path) as connection:  # an SQLite file that is not a study record
        connection.execute("CREATE TABLE notes (x)")
    before = digest(path)
    for access in (Access.READ, Access.UPDATE):
        with pytest.raises(StorageError, match="holds no hptransfer study tables"):
            open_storage(str(path), access)
    assert digest(path) == before

    path = tmp_path / "new.db"
    opened = []
    with open(path, "ab") as handle:  # a tune mid-schema holds the file's lock
        fcntl.flock(handle, fcntl.LOCK_EX)
        optuna.storages.RDBStorage(f"sqlite:///{path}")  # the schema it creates
        reader = threading.Thread(target=lambda: opened.append(open_storage(str(path),
                                                                            Access.READ)))
        reader.start()
        reader.join(0.5)
        assert reader.is_alive() and not opened  # it waits for the tune
        fcntl.flock(handle, fcntl.LOCK_UN)
    reader.join(30)
    assert len(opened) == 1


# ---- 5. no code runs from data ----------------------------------------------------------------

class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_meta_pkl_does_not_run(tmp_path):
    from hptransfer.data.corpus import load_corpus

    np.arange(2000, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(500, dtype=np.uint16).tofile(tmp_path / "val.bin")
    marker = tmp_path / "pwned"
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": _Evil(marker)}))
    with pytest.raises(CorpusError, match="holds code"):
        load_corpus(tmp_path)
    assert not marker.exists()
    (tmp_path / "meta.pkl").write_bytes(pickle.dumps({"vocab_size": 4096, "itos": {0: "a"}}))
    assert load_corpus(tmp_path).vocab_size == 4096  # nanoGPT's own meta.pkl still loads


# ---- 6. names and paths -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["a/b", "../../x", "", " x", ".hidden"])
def test_a_study_name_that_is_not_a_name_is_refused(name, tmp_path, text_file, study):
    storage = tmp_path / "n.db"
    assert "study name" in run(tune_args(text_file, str(storage), "--study", name)).output
    assert not storage.exists()
    run(["plot", "--study", name, "--storage", str(study), "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args", [
    ["train", "--width", "32", *TINY, "--steps", "2", "--out", "/proc/nope/run.json"],
    ["coord-check", "--widths", "32,64", "--steps", "2", "--out", "/proc/nope"],
    ["quickstart", "--out", "/proc/nope"],
])
def test_an_unwritable_out_fails_before_any_compute(args, text_file):
    result = run([*args, "--data", text_file] if args[0] != "quickstart" else args)
    assert "--out" in result.output and "cannot write" in result.output


# ---- 7. wrong outcomes are not reported as fine ----------------------------------------------

def test_an_impossible_target_is_refused_before_any_run(study, tmp_path):
    copy = tmp_path / "s.db"
    copy.write_bytes(study.read_bytes())
    before = digest(copy)
    result = run(["confirm", "--study", "s", "--storage", str(copy), "--target-width",
                  "1000000000"])
    assert "GiB" in result.output and digest(copy) == before
    assert "GiB" in run(["train", "--width", "1000000000", "--steps", "1"]).output


def test_a_confirmation_whose_runs_all_fail_exits_1_and_is_retried(study, tmp_path,
                                                                   monkeypatch):
    copy = tmp_path / "s.db"
    copy.write_bytes(study.read_bytes())
    args = ["confirm", "--study", "s", "--storage", str(copy), "--target-width", "64",
            "--offsets", "-1,0", "--threads", "1"]

    def broken(*_, **__):
        raise RuntimeError("the node went away")

    monkeypatch.setattr("hptransfer.training.loop.train", broken)
    result = run(args, code=1)
    assert "every confirmation run failed" in result.output and "node went away" in result.output
    monkeypatch.undo()
    result = run([*args, "--json"], code=0)
    assert {r["status"] for r in json.loads(result.stdout)["runs"]} == {"complete"}


def test_prediction_input_that_is_wrong_is_refused_or_warned(study):
    base = ["predict", "--study", "s", "--storage", str(study)]
    result = run([*base, "--target-width", "40"])
    assert "not divisible by head_dim" in result.output and "pydantic" not in result.output
    assert "more than any training run" in run([*base, "--target-width", "128",
                                                "--target-tokens", "1e30"]).output
    narrow = run([*base, "--target-width", "16"], code=0)
    assert "narrower than every proxy" in narrow.output


def test_binary_data_is_refused_and_non_utf8_text_is_warned(tmp_path):
    binary = tmp_path / "program"
    binary.write_bytes(b"\x7fELF\x00\x00\x01" * 1000)
    assert "is binary" in run(["train", "--data", str(binary), "--steps", "1"]).output
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("caf\xe9 " * 3000).encode("latin-1"))
    result = run(["train", "--data", str(latin), "--width", "32", *TINY, "--steps", "1",
                  "--batch-size", "2", "--eval-tokens", "64", "--threads", "1"], code=0)
    assert "warning: corpus file" in result.output and "not valid UTF-8" in result.output


@pytest.mark.parametrize("name, data, message", [
    ("latin.toml", "[tune]\nstudy = 'caf\xe9'\n".encode("latin-1"), "not UTF-8"),
    ("list.yaml", b"- tune\n- spec\n", "not a mapping"),
])
def test_a_config_file_that_does_not_decode_or_is_not_a_mapping(name, data, message,
                                                                  tmp_path, text_file):
    pytest.importorskip("yaml")
    path = tmp_path / name
    path.write_bytes(data)
    assert message in run(tune_args(text_file, str(tmp_path / "c.db"), "--config",
                                    str(path))).output


def test_a_worker_does_not_add_a_width(study, tmp_path):
    copy = tmp_path / "s.db"
    copy.write_bytes(study.read_bytes())
    before = digest(copy)
    result = run(["worker", "--study", "s", "--storage", str(copy), "--width", "128",
                  "--trials", "3", "--quiet"])
    assert "has widths 32, 64, not 128" in result.output and digest(copy) == before

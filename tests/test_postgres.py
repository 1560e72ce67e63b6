"""A PostgreSQL storage shared by two workers, on a throwaway server started for the session.

Needs the PostgreSQL server binaries (``initdb``, ``pg_ctl``: ``apt-get install postgresql``)
and the driver (``pip install 'hptransfer[postgres]'``); skipped, saying which is missing,
otherwise. The server lives in a temporary folder, listens on 127.0.0.1 at a free port with
``trust`` authentication, and is stopped when the session ends.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from processes import PID_ATTR, wait_for_another_worker

from hptransfer.cli import main
from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialStatus
from hptransfer.study.storage import open_storage

GRID = [2.0**-8, 2.0**-6, 2.0**-4]  # the warm-start grid of --lr-range 2^-8,2^-4


def _server_binaries() -> Path | None:
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    # Debian keeps them off PATH, one folder per major version
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _as_server_user() -> list[str]:
    """initdb refuses to run as root: run the server commands as the ``postgres`` user."""
    if os.geteuid() != 0:
        return []
    try:
        import pwd

        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("running as root, and initdb refuses root: create a 'postgres' user "
                    "(apt-get install postgresql does) or run the tests as another user")
    if shutil.which("runuser"):
        return ["runuser", "-u", "postgres", "--"]
    pytest.skip("running as root without runuser to start PostgreSQL as the postgres user")


@pytest.fixture(scope="session")
def postgres_url():
    binaries = _server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: "
                    "apt-get install postgresql")
    if importlib.util.find_spec("psycopg2") is None:
        pytest.skip("the PostgreSQL driver psycopg2 is not installed: "
                    "pip install 'hptransfer[postgres]'")
    import psycopg2

    prefix = _as_server_user()
    # not under pytest's tmp folder: it is private to the user running pytest
    root = Path(tempfile.mkdtemp(prefix="hptransfer-postgres-"))
    data, sockets, log = root / "data", root / "sockets", root / "server.log"
    sockets.mkdir()
    if prefix:
        for path in (root, sockets):
            shutil.chown(path, "postgres", "postgres")
    port = _free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*prefix, *command], capture_output=True, text=True, timeout=60)
        if done.returncode:
            log_text = log.read_text() if log.exists() else ""
            pytest.fail(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}{log_text}")

    run(str(binaries / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
        "--no-sync", "-E", "UTF8")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60", "-o",
        f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
    try:
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="postgres",
                                      dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("CREATE DATABASE hptransfer")
        connection.close()
        yield f"postgresql://postgres@127.0.0.1:{port}/hptransfer"
    finally:
        subprocess.run([*prefix, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_workers_share_a_postgres_study(postgres_url, text_file, tmp_path, monkeypatch):
    from hptransfer.cli import studies

    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPTRANSFER_THREADS", "1")
    config = tmp_path / "tiny.toml"
    config.write_text("[hparams]\nbatch_size = 4\n\n[budget]\neval_every = 2\n"
                      "eval_tokens = 1024\n")
    # the child worker takes seconds to start: hold this process after its first trial
    # until the child has a trial of its own, so the rest surely run concurrently
    original, waited = studies.TrialProgress.update, []

    def update(self, trial):
        if not waited:
            waited.append(True)
            wait_for_another_worker(postgres_url, "pg.w32")
        original(self, trial)

    monkeypatch.setattr(studies.TrialProgress, "update", update)
    trials = 6
    result = CliRunner().invoke(main, [
        "tune", "--config", str(config), "--data", text_file, "--depth", "1",
        "--seq-len", "32", "--head-dim", "16", "--base-width", "32", "--lr-range", "2^-8,2^-4",
        "--weight-decay-range", "off", "--batch-sizes", "off", "--steps", "20",
        "--proxy-width", "32", "--trials", str(trials), "--workers", "2", "--study", "pg",
        "--storage", postgres_url, "--json"])
    assert result.exit_code == 0, result.output

    storage = open_storage(postgres_url)
    study_trials = optuna.load_study(study_name="pg.w32", storage=storage).get_trials()
    numbers = sorted(t.number for t in study_trials)
    assert numbers == list(range(len(numbers)))
    assert len({t.system_attrs[PID_ATTR] for t in study_trials}) == 2
    records = load_trials("pg", storage)
    done = [r for r in records if r.finished]
    assert trials <= len(done) <= trials + 1  # +1: both workers may ask for the last trial
    assert all(r.status is TrialStatus.COMPLETE and r.hparams is not None for r in records)
    lrs = Counter(r.hparams.lr for r in done)
    assert all(lrs[lr] == 1 for lr in GRID), lrs

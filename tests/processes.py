"""Processes in tests: the installed console script, waiting for a second worker, and
freezing a process where it holds no lock."""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hptransfer.study.storage import open_storage

PID_ATTR = "hptransfer:pid"  # system attribute of a running trial (see hptransfer.study.tune)


def wait_for_another_worker(url: str, name: str, timeout: float = 60) -> None:
    """Block until a process other than this one has started a trial of study ``name``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        pids = {t.system_attrs.get(PID_ATTR) for t in study.get_trials(deepcopy=False)}
        if pids - {None, os.getpid()}:
            return
        time.sleep(0.1)
    pytest.fail(f"no second worker started a trial of {name} within {timeout} s")


def console_script() -> str:
    """The installed ``hptransfer`` script (beside this Python first, then on PATH)."""
    beside_python = Path(sys.executable).parent / "hptransfer"
    if beside_python.is_file():
        return str(beside_python)
    found = shutil.which("hptransfer")
    if found is None:
        pytest.fail("the hptransfer console script is not installed (pip install -e .)")
    return found


def freeze_outside_a_transaction(process: subprocess.Popen, db: str | Path) -> bool:
    """Stop ``process`` (SIGSTOP) if it holds no lock on the SQLite file ``db``, and say
    whether it did. Stopped inside a transaction, it would keep SQLite's lock until it runs
    again, and every read or write of the file would wait for it (then fail)."""
    process.send_signal(signal.SIGSTOP)
    path = str(db).removeprefix("sqlite:///")
    connection = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    try:
        connection.execute("BEGIN IMMEDIATE")
        connection.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        process.send_signal(signal.SIGCONT)
        return False
    finally:
        connection.close()

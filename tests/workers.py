"""Helpers shared by the multi-worker tests (test_tuning.py, test_postgres.py)."""

from __future__ import annotations

import os
import time

import optuna
import pytest

from hptransfer.storage import open_storage

PID_ATTR = "hptransfer:pid"  # system attribute of a running trial (see hptransfer.tuning)


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

"""The README's main job, and a tune with two workers, run to the end on a quiet machine and
on a busy one: busy-loop processes (two per core) keep every core busy beside them, as a
shared cluster node's data loaders and other jobs do.

Under load every command must still exit 0 with no traceback, run every trial once (none
lost, none twice, none left behind) and record exactly what the quiet run records: a
trial's loss depends only on its own seed and threads, never on the machine's load. The
quickstart here is ``hptransfer quickstart --steps 10`` (the README's command, its code path
unchanged, with 10 steps per trial instead of 150 so that it fits the default suite); the
quiet run is in the default suite, the loaded runs are marked slow (about 2 minutes each on
2 cores: ``pytest -m slow tests/test_load.py``). The default suite itself passes on a busy
machine (1,328 tests at load 9–15, 36 minutes), so its multi-process tests see load too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from processes import console_script
from tiny import lr_only_toml

from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialStatus

QUICKSTART_STEPS = "10"
BUSY_PER_CORE = 2


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@pytest.fixture
def busy():
    """Two busy-loop processes per core, for the length of the test."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
             for _ in range(BUSY_PER_CORE * _cores())]
    yield loops
    for loop in loops:
        loop.kill()
    for loop in loops:
        loop.wait()


def _trials(name: str, url: str) -> list[tuple]:
    """Every trial as (width, lr, seed, ladder step, status, loss), in a fixed order."""
    return sorted((r.width, r.hparams.lr if r.hparams else None, r.seed, r.ladder,
                   r.status.value, r.final_val_loss, r.retry_of)
                  for r in load_trials(name, url))


def _assert_every_trial_once(rows: list[tuple]) -> None:
    statuses = {row[4] for row in rows}
    assert statuses <= {TrialStatus.COMPLETE.value, TrialStatus.DIVERGED.value}, statuses
    assert all(row[6] is None for row in rows)  # no retry: nothing was lost
    points = [row[:4] for row in rows]
    assert len(points) == len(set(points))  # no point trained twice


def _quickstart(out: Path, home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HPTRANSFER_HOME": str(home)}
    env.pop("HPTRANSFER_THREADS", None)  # the README's command, as a user runs it
    return subprocess.run([console_script(), "quickstart", "--steps", QUICKSTART_STEPS,
                           "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=1800)


def _assert_ran_to_the_end(result: subprocess.CompletedProcess, out: Path) -> None:
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    for stage in ("1/5 coord check", "2/5 tune", "3/5 predict", "4/5 confirm", "verdict:",
                  "5/5 the score", "score:",
                  "compute:", "report:"):
        assert stage in result.stdout, f"{stage!r} missing:\n{result.stdout[-3000:]}"
    for name in ("studies.db", "prediction.json", "quickstart_report.md",
                 "quickstart_report.html", "quickstart_transfer.png", "coord_check_mup.png"):
        assert (out / name).is_file(), name


@pytest.fixture(scope="module")
def quiet_quickstart(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("quiet") / "quickstart"
    result = _quickstart(out, out.parent / "home")
    _assert_ran_to_the_end(result, out)
    return out


def test_the_readme_main_job_runs_to_the_end(quiet_quickstart):
    rows = _trials("quickstart", str(quiet_quickstart / "studies.db"))
    _assert_every_trial_once(rows)
    assert {row[0] for row in rows} == {32, 64}


@pytest.mark.slow
def test_the_readme_main_job_under_load_records_what_it_does_quietly(quiet_quickstart,
                                                                     tmp_path, busy):
    out = tmp_path / "quickstart"
    _assert_ran_to_the_end(_quickstart(out, tmp_path / "home"), out)
    loaded = _trials("quickstart", str(out / "studies.db"))
    _assert_every_trial_once(loaded)
    assert loaded == _trials("quickstart", str(quiet_quickstart / "studies.db"))
    assert (json.loads((out / "prediction.json").read_text())["hparams"]
            == json.loads((quiet_quickstart / "prediction.json").read_text())["hparams"])
    assert _confirmation(out) == _confirmation(quiet_quickstart)


def _confirmation(out: Path) -> list[tuple]:
    from hptransfer.confirmation.runs import load_confirmation

    found = load_confirmation("quickstart", 128, str(out / "studies.db"))
    return [(run.offset, run.status.value, run.loss) for run in found.runs]


@pytest.mark.slow
def test_tune_with_two_workers_under_load_records_what_one_quiet_process_does(
        tmp_path, text_file, busy):
    """``hptransfer tune --workers 2`` beside two busy loops per core: every trial once,
    and exactly the trials and losses one process records on a quiet machine."""
    config_file = lr_only_toml(tmp_path / "tiny.toml", steps=4, eval_every=2)

    def tune(storage: str, workers: str) -> None:
        result = subprocess.run(
            [console_script(), "tune", "--config", str(config_file), "--data", text_file,
             "--widths", "32,64", "--trials", "10", "--study", "l", "--storage", storage,
             "--workers", workers, "--threads", "1"],
            capture_output=True, text=True, timeout=1200,
            env={**os.environ, "HPTRANSFER_HOME": str(tmp_path / "home")})
        assert result.returncode == 0, result.stderr[-4000:]
        assert "Traceback" not in result.stderr

    loaded, quiet = str(tmp_path / "loaded.db"), str(tmp_path / "quiet.db")
    tune(loaded, "2")
    for loop in busy:  # then quiet, one process
        loop.kill()
    tune(quiet, "1")
    rows = _trials("l", loaded)
    _assert_every_trial_once(rows)
    assert rows == _trials("l", quiet)

"""Real processes interrupted as users and clusters interrupt them: Ctrl-C during ``tune``
and ``confirm`` (each with a second process training beside it), and a worker frozen
(SIGSTOP: a host that vanished, a network partition) long enough for its trial to be taken
over, which then wakes up.

Each must end without a traceback, lose no finished trial and record none twice; Ctrl-C
within seconds, with exit status 130 and one line saying how to resume.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from processes import PID_ATTR, console_script, freeze_outside_a_transaction
from tiny import lr_only_toml

from hptransfer.study.lifecycle import INTERRUPTED
from hptransfer.study.names import confirmation_study_name
from hptransfer.study.records import load_trials, records_of
from hptransfer.study.schema import TrialStatus
from hptransfer.study.storage import open_storage

STOP_WITHIN_S = 10.0  # "stops within a few seconds", with margin for a loaded machine


def _config(tmp_path: Path, steps: int) -> Path:
    return lr_only_toml(tmp_path / f"tiny{steps}.toml", steps)


def _env(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HPTRANSFER_THREADS", "1")


def _running(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    try:
        study = optuna.load_study(study_name=name, storage=open_storage(url))
    except Exception:  # not created yet
        return []
    return [t for t in study.get_trials(deepcopy=False)
            if t.state is TrialState.RUNNING and PID_ATTR in t.system_attrs]


def _wait_for_two_running(process: subprocess.Popen, url: str, name: str,
                          timeout: float = 180) -> None:
    """Until two processes each train a trial of ``name`` (both past their first point)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1][-3000:]
        running = _running(url, name)
        if (len({t.system_attrs[PID_ATTR] for t in running}) == 2
                and all(t.intermediate_values for t in running)):
            return
        time.sleep(0.1)
    pytest.fail(f"two processes never trained {name} side by side within {timeout} s")


def _interrupt(process: subprocess.Popen) -> tuple[float, str]:
    """Ctrl-C; the seconds it took to exit, and its stderr."""
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    _, err = process.communicate(timeout=120)
    return time.monotonic() - started, err


def _assert_interrupted_quietly(process, seconds: float, err: str, command: str) -> None:
    assert process.returncode == 130, err[-3000:]
    assert seconds < STOP_WITHIN_S, f"took {seconds:.1f} s to stop"
    assert "Traceback" not in err, err[-3000:]
    said = [line for line in err.splitlines() if line.startswith("interrupted")]
    assert len(said) == 1 and f"run the same hptransfer {command} command again" in said[0]


def test_ctrl_c_stops_a_tune_and_its_worker_and_the_rerun_retries_first(tmp_path, text_file,
                                                                        monkeypatch):
    _env(tmp_path, monkeypatch)
    url = str(tmp_path / "s.db")
    command = [console_script(), "tune", "--config", str(_config(tmp_path, 600)), "--data",
               text_file, "--widths", "32", "--trials", "6", "--study", "i",
               "--storage", url, "--workers", "2", "--threads", "1", "--json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    _wait_for_two_running(process, url, "i.w32")
    seconds, err = _interrupt(process)
    _assert_interrupted_quietly(process, seconds, err, "tune")
    interrupted = [r for r in load_trials("i", url) if r.status is TrialStatus.LOST]
    assert len(interrupted) == 2 and all(r.reason == INTERRUPTED for r in interrupted)
    assert not _running(url, "i.w32")  # no trial is left for a grace period to reclaim
    resumed_at = time.time()

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    study = optuna.load_study(study_name="i.w32", storage=open_storage(url))
    records = {r.number: r for r in records_of(study)}
    retries = [r for r in records.values() if r.retry_of is not None]
    assert sorted(r.retry_of for r in retries) == sorted(r.number for r in interrupted)
    assert all(r.status is TrialStatus.COMPLETE for r in retries)
    # the retries were the first trials the rerun started
    started = sorted((t.datetime_start.timestamp(), t.number) for t in study.get_trials()
                     if t.datetime_start and t.datetime_start.timestamp() >= resumed_at - 1)
    assert {number for _, number in started[:2]} == {r.number for r in retries}
    assert not [r for r in records.values()
                if r.status in (TrialStatus.RUNNING, TrialStatus.WAITING)]


def test_ctrl_c_stops_a_confirm_and_its_helper(tmp_path, monkeypatch, tiny_study_config,
                                               tiny_corpus):
    """Two confirmation runs side by side (this process and a helper), Ctrl-C: both are
    handed back, exit 130 within seconds; the same command then trains them."""
    from hptransfer.budget import Budget
    from hptransfer.study.search import SamplerKind
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    _env(tmp_path, monkeypatch)
    url = str(tmp_path / "c.db")
    config = tiny_study_config.model_copy(update={
        "budget": Budget(steps=300, eval_every=30, eval_tokens=1024)})
    tune(config, study="c", widths=(32, 64), trials=3, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    command = [console_script(), "confirm", "--target-width", "256", "--study", "c",
               "--storage", url, "--offsets", "0,1", "--workers", "2", "--threads", "1",
               "--json"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True)
    name = confirmation_study_name("c", 256)
    _wait_for_two_running(process, url, name)
    seconds, err = _interrupt(process)
    _assert_interrupted_quietly(process, seconds, err, "confirm")
    runs = optuna.load_study(study_name=name, storage=open_storage(url))
    lost = [r for r in records_of(runs) if r.status is TrialStatus.LOST]
    assert len(lost) == 2 and all(r.reason == INTERRUPTED for r in lost)
    assert not _running(url, name)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    records = records_of(runs)
    assert sorted(r.retry_of for r in records if r.retry_of is not None) == sorted(
        r.number for r in lost)
    assert sum(r.status is TrialStatus.COMPLETE for r in records) == 2  # each offset once


def test_a_frozen_worker_whose_trial_was_taken_over_wakes_up_quietly(tmp_path, monkeypatch,
                                                                    tiny_study_config,
                                                                    tiny_corpus):
    """A worker frozen mid-trial looks, to the others, like a host that vanished: once its
    heartbeat is older than the grace its trial is taken over and retried. When it wakes,
    it records nothing over the retry, says in one line that its run was superseded, and
    carries on: exit 0, no traceback, every trial recorded once."""
    from hptransfer.budget import Budget
    from hptransfer.study.search import SamplerKind
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner, run_worker

    _env(tmp_path, monkeypatch)
    url = str(tmp_path / "f.db")
    config = tiny_study_config.model_copy(update={
        "budget": Budget(steps=600, eval_every=60, eval_tokens=1024)})
    tune(config, study="f", widths=(32,), trials=1, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    worker = subprocess.Popen(
        [console_script(), "worker", "--study", "f", "--storage", url, "--width", "32",
         "--trials", "3", "--sampler", "tpe", "--threads", "1", "--quiet"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    storage = open_storage(url)
    frozen = None
    deadline = time.monotonic() + 120
    while frozen is None and time.monotonic() < deadline:
        assert worker.poll() is None, worker.communicate()[1][-3000:]
        running = [t for t in _running(url, "f.w32") if t.intermediate_values]
        if running:
            if freeze_outside_a_transaction(worker, url):
                frozen = running[0]
        time.sleep(0.1)
    assert frozen is not None, "the worker never ran a trial"
    try:
        # as seen from elsewhere: a holder on another machine, silent for an hour
        storage.set_trial_system_attr(frozen._trial_id, "hptransfer:place", "node-9/x/1")
        storage.set_trial_system_attr(frozen._trial_id, "hptransfer:heartbeat",
                                      time.time() - 3600)
        run_worker("f", 32, config, storage, tiny_corpus, trials=3, threads=1,
                   sampler=SamplerKind.TPE)  # takes it over, retries it first, tops up
    finally:
        worker.send_signal(signal.SIGCONT)
    _, err = worker.communicate(timeout=300)
    assert worker.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    superseded = [line for line in err.splitlines() if "superseded" in line]
    assert len(superseded) == 1 and f"trial {frozen.number}" in superseded[0]
    records = load_trials("f", url)
    (lost,) = [r for r in records if r.status is TrialStatus.LOST]
    assert lost.number == frozen.number and lost.final_val_loss is None
    (retry,) = [r for r in records if r.retry_of == frozen.number]
    assert retry.status is TrialStatus.COMPLETE and retry.hparams == lost.hparams
    assert sum(r.finished for r in records) == 3
    assert not [r for r in records if r.status in (TrialStatus.RUNNING, TrialStatus.WAITING)]

"""Leases: a holder on this machine is alive exactly while its process runs (its heartbeat
does not matter, a reused pid is another process); a holder elsewhere is alive while its
heartbeat is within the grace; the grace must hold several beats; a failed beat is retried
and reported."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from optuna.trial import TrialState

from hptransfer.errors import StudyError
from hptransfer.study import leases
from hptransfer.study.lifecycle import reclaim_lost
from hptransfer.study.records import records_of
from hptransfer.study.schema import TrialStatus
from hptransfer.study.storage import open_storage

LR = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
STALE = 3600.0  # seconds: a heartbeat far older than any grace


@pytest.fixture
def study(tmp_path):
    return optuna.create_study(study_name="x.w32", storage=open_storage(str(tmp_path / "s.db")))


def _held_by(study, *, beat_age: float = 0.0, **holder):
    """A RUNNING trial whose lease names ``holder`` (host, place, pid, started, token)."""
    trial = study.ask(LR)
    attrs = {"hptransfer:heartbeat": time.time() - beat_age,
             **{f"hptransfer:{'lease' if k == 'token' else k}": v for k, v in holder.items()}}
    for key, value in attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    return trial


def _here(pid: int) -> dict:
    me = leases.this_process()
    return {"host": me.host, "place": me.place, "pid": pid,
            "started": leases._start_time(pid)}


def _statuses(study) -> dict[int, TrialStatus]:
    return {r.number: r.status for r in records_of(study)}


def test_a_holder_on_this_machine_is_alive_while_its_process_runs(study):
    """However old its heartbeat (a loaded node, a GC pause), a live process keeps its
    trial; once it has ended, the trial is taken over at once, not after a grace."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        trial = _held_by(study, beat_age=STALE, **_here(sleeper.pid))
        assert reclaim_lost(study) == []
        assert study.get_trials()[trial.number].state is TrialState.RUNNING
    finally:
        sleeper.kill()
        sleeper.wait()
    assert reclaim_lost(study) == [trial.number]
    statuses = _statuses(study)
    assert statuses[trial.number] is TrialStatus.LOST
    assert sorted(statuses.values()) == sorted([TrialStatus.LOST, TrialStatus.WAITING])


def test_a_trial_whose_holder_never_said_who_it_is_is_gone_after_a_few_beats(study):
    """Claimed, then killed before it wrote its identity (milliseconds apart): nobody can
    ask its process, so it is taken over three heartbeats after its claim, not after the
    whole grace that the next tune would otherwise sit out."""
    timing = leases.LeaseTiming(heartbeat_s=0.2, grace_s=300)
    trial = study.ask(LR)  # RUNNING, no lease written
    cut = _held_by(study, place=leases.this_process().place)  # killed after its first write
    assert reclaim_lost(study, timing) == []  # just claimed: their holders may be writing
    time.sleep(leases.IDENTITY_BEATS * timing.heartbeat_s + 0.2)
    assert sorted(reclaim_lost(study, timing)) == [trial.number, cut.number]
    assert _statuses(study)[trial.number] is TrialStatus.LOST


def test_a_reused_pid_is_another_process(study):
    """A lease naming a pid that runs, but started at another time, is a dead holder's."""
    holder = {**_here(os.getppid()), "started": -1.0}  # the pid runs; its start time differs
    trial = _held_by(study, **holder)
    assert reclaim_lost(study) == [trial.number]


def test_a_holder_elsewhere_lapses_after_the_grace_and_is_retried_once(study, monkeypatch):
    monkeypatch.setenv("HPTRANSFER_GRACE_S", "30")
    elsewhere = {"host": "node-7", "place": "node-7/boot/4026531836", "pid": 1,
                 "started": 1.0}
    stale = _held_by(study, beat_age=60, **elsewhere)
    fresh = _held_by(study, beat_age=5, **elsewhere)
    assert reclaim_lost(study) == [stale.number]
    assert reclaim_lost(study) == []  # a second worker finds nothing to retry
    trials = study.get_trials(deepcopy=False)
    assert trials[stale.number].state is TrialState.FAIL
    assert trials[fresh.number].state is TrialState.RUNNING
    (retry,) = [t for t in trials if t.state is TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == stale.number
    assert retry.system_attrs["fixed_params"]["lr"] == trials[stale.number].params["lr"]
    (lost,) = [r for r in records_of(study) if r.status is TrialStatus.LOST]
    assert lost.number == stale.number and "heartbeat" in lost.reason


def test_a_trial_this_process_no_longer_holds_is_lost(study):
    """This process's own pid is alive, but a trial it claimed and no longer holds (left
    RUNNING by an error between claim and finish) is not kept alive by that."""
    me = leases.this_process()
    left = _held_by(study, **_here(me.pid), token="not-held")
    held = study.ask(LR)
    beat = leases.Heartbeat(study._storage, held._trial_id)
    try:
        assert reclaim_lost(study) == [left.number]
    finally:
        beat.stop()
    assert reclaim_lost(study) == [held.number]  # once stopped, it is not held any more


def test_a_lease_written_before_places_falls_back_to_pid_then_heartbeat(study, monkeypatch):
    monkeypatch.setenv("HPTRANSFER_GRACE_S", "30")
    me = leases.this_process()
    live = _held_by(study, beat_age=5, host=me.host, pid=os.getppid())
    dead = _held_by(study, beat_age=5, host=me.host, pid=2**22 + 11)  # no such process
    assert reclaim_lost(study) == [dead.number]
    assert study.get_trials()[live.number].state is TrialState.RUNNING


@pytest.mark.parametrize("environment, message", [
    ({"HPTRANSFER_GRACE_S": "1", "HPTRANSFER_HEARTBEAT_S": "5"}, "fewer than 3 heartbeats"),
    ({"HPTRANSFER_GRACE_S": "20"}, "fewer than 3 heartbeats of 10 s"),
    ({"HPTRANSFER_GRACE_S": "soon"}, "not a number"),
    ({"HPTRANSFER_HEARTBEAT_S": "0"}, "greater than 0"),
    ({"HPTRANSFER_GRACE_S": "inf"}, "finite"),
])
def test_a_grace_that_cannot_hold_is_refused(environment, message, monkeypatch):
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(StudyError, match=message):
        leases.lease_timing()


def test_the_default_timing_holds_thirty_beats(monkeypatch):
    monkeypatch.delenv("HPTRANSFER_GRACE_S", raising=False)
    monkeypatch.delenv("HPTRANSFER_HEARTBEAT_S", raising=False)
    timing = leases.lease_timing()
    assert (timing.heartbeat_s, timing.grace_s) == (10.0, 300.0)


class _Flaky:
    """A storage whose heartbeat writes fail ``failures`` times (SQLite busy past its
    timeout), then work."""

    def __init__(self, storage, failures: int) -> None:
        self._storage, self.failures, self.armed = storage, failures, False

    def set_trial_system_attr(self, trial_id, key, value):
        if key == "hptransfer:heartbeat" and self.armed and self.failures:
            self.failures -= 1
            raise optuna.exceptions.StorageInternalError("database is locked")
        return self._storage.set_trial_system_attr(trial_id, key, value)


def test_a_failed_heartbeat_is_retried_and_reported(study, monkeypatch):
    monkeypatch.setenv("HPTRANSFER_HEARTBEAT_S", "0.05")
    trial = study.ask(LR)
    flaky = _Flaky(study._storage, failures=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        beat = leases.Heartbeat(flaky, trial._trial_id)
        flaky.armed = True
        first = study._storage.get_trial_system_attrs(trial._trial_id)["hptransfer:heartbeat"]
        deadline = time.monotonic() + 20
        while flaky.failures and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.5)  # retried within a second of a failure, then beating again
        beat.stop()
    said = [str(w.message) for w in caught if issubclass(w.category, leases.LeaseWarning)]
    assert len(said) == 2, said  # once when it failed, once when it wrote again
    assert "failed (StorageInternalError: database is locked); retrying" in said[0]
    assert "written again" in said[1]
    assert study._storage.get_trial_system_attrs(
        trial._trial_id)["hptransfer:heartbeat"] > first

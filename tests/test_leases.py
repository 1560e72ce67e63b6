"""Leases: a RUNNING trial is lost when its process is gone (same host) or its heartbeat is
stale (any host); a lost trial is retried exactly once."""

from __future__ import annotations

import time

import optuna
from optuna.trial import TrialState

import hptransfer.study.leases as leases
from hptransfer.study.ledger import TrialStatus


def _running_trial(study, **system_attrs):
    trial = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    for key, value in system_attrs.items():
        study._storage.set_trial_system_attr(trial._trial_id, key, value)
    return trial


def test_stale_heartbeat_from_another_host_is_reclaimed_once(tmp_path, monkeypatch):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="x.w32", storage=storage)
    monkeypatch.setattr(leases, "GRACE_S", 5.0)
    stale = _running_trial(study, **{"hptransfer:host": "elsewhere", "hptransfer:pid": 1,
                                     "hptransfer:heartbeat": time.time() - 60})
    fresh = _running_trial(study, **{"hptransfer:host": "elsewhere", "hptransfer:pid": 1,
                                     "hptransfer:heartbeat": time.time()})
    assert leases.reclaim_lost(study) == [stale.number]
    assert leases.reclaim_lost(study) == []  # a second worker finds nothing to retry
    trials = study.get_trials(deepcopy=False)
    assert trials[stale.number].state is TrialState.FAIL
    assert trials[stale.number].user_attrs["status"] == TrialStatus.LOST.value
    assert trials[fresh.number].state is TrialState.RUNNING
    (retry,) = [t for t in trials if t.state is TrialState.WAITING]
    assert retry.user_attrs["retry_of"] == stale.number
    assert retry.system_attrs["fixed_params"]["lr"] == trials[stale.number].params["lr"]


def test_heartbeat_thread_refreshes_the_lease(tmp_path, monkeypatch):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="x.w32", storage=storage)
    monkeypatch.setattr(leases, "HEARTBEAT_S", 0.05)
    trial = study.ask()
    beat = leases.Heartbeat(storage, trial._trial_id)
    first = storage.get_trial_system_attrs(trial._trial_id)["hptransfer:heartbeat"]
    time.sleep(0.3)
    beat.stop()
    assert storage.get_trial_system_attrs(trial._trial_id)["hptransfer:heartbeat"] > first
    assert not leases.is_lost(study.get_trials(deepcopy=False)[0])  # our own, alive

"""Leases: which running trials still have a live worker, and retrying the ones that do not.

Optuna's own heartbeat works only inside ``study.optimize`` on an RDB storage; hptransfer
drives ask/tell and also supports JournalStorage. So each running trial records its host,
pid and a heartbeat time as system attributes (refreshed by :class:`Heartbeat` every
``HEARTBEAT_S`` seconds). A RUNNING trial is *lost* when its process is gone (same host) or
its heartbeat is older than ``GRACE_S`` (any host); :func:`reclaim_lost` marks it lost and
enqueues its exact parameters again, once (the ledger's compare-and-set decides which
worker wins). These system attributes are the leases' own; the record is the ledger's.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING

from hptransfer.study.ledger import enqueue_retry, mark_lost, read_planner, write_planner

if TYPE_CHECKING:
    import optuna

__all__ = ["GRACE_S", "HEARTBEAT_S", "Heartbeat", "PlannerLease", "is_lost", "planner_alive",
           "reclaim_lost", "record_worker"]

HEARTBEAT_S = float(os.environ.get("HPTRANSFER_HEARTBEAT_S", 10))
GRACE_S = float(os.environ.get("HPTRANSFER_GRACE_S", 60))
_HOST, _PID, _BEAT = "hptransfer:host", "hptransfer:pid", "hptransfer:heartbeat"
_WORKER = "hptransfer:ray_worker"  # host:pid of the process that trains it, when not ours


class Heartbeat:
    """Holds a running trial's lease: refreshes its heartbeat from a daemon thread until
    :meth:`stop`."""

    def __init__(self, storage, trial_id: int) -> None:
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        storage.set_trial_system_attr(trial_id, _HOST, socket.gethostname())
        storage.set_trial_system_attr(trial_id, _PID, os.getpid())
        storage.set_trial_system_attr(trial_id, _BEAT, time.time())
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._storage.set_trial_system_attr(self._trial_id, _BEAT, time.time())
            except Exception:  # the trial finished meanwhile, or the storage blipped
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class PlannerLease:
    """Says, every ``HEARTBEAT_S`` from a daemon thread, that this process plans a ladder
    width's rounds (its followers wait for rounds while it lives) until :meth:`stop`."""

    def __init__(self, study: optuna.Study) -> None:
        self._study, self._stop = study, threading.Event()
        self._beat()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        write_planner(self._study, socket.gethostname(), os.getpid(), time.time())

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self._beat()
            except Exception:  # a storage blip: the next beat retries
                pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def planner_alive(study: optuna.Study) -> bool | None:
    """Whether another process plans this ladder width now: True, False (it stopped or
    died), or None when no process ever planned it."""
    planner = read_planner(study)
    if planner is None:
        return None
    if planner.get("host") == socket.gethostname() and planner.get("pid") != os.getpid():
        if not _process_alive(int(planner["pid"])):
            return False
    return time.time() - float(planner.get("beat", 0.0)) <= GRACE_S


def record_worker(storage, trial_id: int) -> None:
    """Note which process trains a trial whose lease another process holds (a Ray worker:
    the driver holds the lease, since Ray, not hptransfer, retries a dead worker)."""
    storage.set_trial_system_attr(trial_id, _WORKER, f"{socket.gethostname()}:{os.getpid()}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_lost(trial: optuna.trial.FrozenTrial) -> bool:
    attrs = trial.system_attrs
    beat = attrs.get(_BEAT)
    if beat is None:  # asked, but died before its first heartbeat was written
        beat = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    if attrs.get(_HOST) == socket.gethostname() and _PID in attrs:
        if attrs[_PID] != os.getpid() and not _process_alive(int(attrs[_PID])):
            return True
    return time.time() - beat > GRACE_S


def reclaim_lost(study: optuna.Study) -> list[int]:
    """Mark lost RUNNING trials FAIL (status ``lost``) and enqueue each once more; the
    numbers of the trials this worker reclaimed."""
    from optuna.trial import TrialState

    retried = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_lost(trial) and mark_lost(study._storage, trial):
            enqueue_retry(study, trial)
            retried.append(trial.number)
    return retried

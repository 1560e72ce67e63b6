"""Leases: which running trials, and which ladder planner, still have a live process.

Optuna's own heartbeat works only inside ``study.optimize`` on an RDB storage; hptransfer
drives ask/tell and also supports JournalStorage. So a process that holds a trial (a
:class:`Heartbeat`) or plans a ladder width (a :class:`PlannerLease`) writes who it is —
host, pid, the process's start time, where a pid means that process — and refreshes a
heartbeat every ``heartbeat_s`` from a daemon thread.

Liveness that does not lie: a holder **on this machine** is alive exactly while its
process runs, checked by pid *and* start time (a reused pid is another process); its
heartbeat does not matter, since a loaded node, a slow disk, SQLite waiting on another
writer or a long GC pause can hold a beat back for minutes. A holder **on another machine**
cannot be checked, so it is alive while its heartbeat is younger than ``grace_s`` (default
300 s: thirty beats). A trial whose holder died between claiming it and writing who it is
is gone three beats after its claim. "This machine" is the host name, its boot and the pid
namespace, so two containers that share a host name are two machines. A beat that fails is
retried and reported, never dropped silently. Deciding what to do with a trial whose
holder is gone is the lifecycle's (:mod:`hptransfer.study.lifecycle`).
"""

from __future__ import annotations

import functools
import math
import os
import socket
import threading
import time
import uuid
import warnings
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import Field, model_validator

from hptransfer.errors import StudyError
from hptransfer.spec import FrozenConfig
from hptransfer.study.attributes import read_planner, write_planner

if TYPE_CHECKING:
    import optuna

__all__ = ["DEFAULT_GRACE_S", "DEFAULT_HEARTBEAT_S", "IDENTITY_BEATS", "Heartbeat",
           "LeaseTiming", "LeaseWarning", "PlannerLease", "Process", "holder_alive", "lease_timing",
           "planner_alive", "record_worker", "this_process", "trial_holder_alive"]

DEFAULT_HEARTBEAT_S = 10.0
DEFAULT_GRACE_S = 300.0
MIN_BEATS_PER_GRACE = 3  # a grace shorter than three beats calls a live holder dead

# the system attributes of a trial's lease
_HOST, _PLACE, _PID, _STARTED = "hptransfer:host", "hptransfer:place", "hptransfer:pid", \
    "hptransfer:started"
_TOKEN, _BEAT = "hptransfer:lease", "hptransfer:heartbeat"
_WORKER = "hptransfer:ray_worker"  # host:pid of the process that trains it, when not ours
RELEASED = "released"  # the token of a lease its holder gave up while its process lives on


class LeaseWarning(UserWarning):
    """A lease could not be refreshed, or a run was superseded: said in one line, the work
    goes on."""


class LeaseTiming(FrozenConfig):
    """How often a holder beats, and how long a holder on another machine may stay silent
    before its trial is taken over (``HPTRANSFER_HEARTBEAT_S``, ``HPTRANSFER_GRACE_S``)."""

    heartbeat_s: float = Field(DEFAULT_HEARTBEAT_S, gt=0)
    grace_s: float = Field(DEFAULT_GRACE_S, gt=0)

    @model_validator(mode="after")
    def _grace_holds_several_beats(self) -> LeaseTiming:
        if not (math.isfinite(self.heartbeat_s) and math.isfinite(self.grace_s)):
            raise ValueError("the heartbeat and the grace must be finite numbers of seconds")
        if self.grace_s < MIN_BEATS_PER_GRACE * self.heartbeat_s:
            raise ValueError(
                f"a grace of {self.grace_s:g} s holds fewer than {MIN_BEATS_PER_GRACE} "
                f"heartbeats of {self.heartbeat_s:g} s: a holder that is merely slow would be "
                f"called dead and its trial run twice")
        return self


# heartbeats after its claim within which a trial's holder must have written who it is
IDENTITY_BEATS = 3


def lease_timing() -> LeaseTiming:
    """The lease timing from the environment, checked: a bad setting is refused before
    anything runs (exit 2 on the command line)."""
    values = {}
    for key, variable in (("heartbeat_s", "HPTRANSFER_HEARTBEAT_S"),
                          ("grace_s", "HPTRANSFER_GRACE_S")):
        text = os.environ.get(variable)
        if text is None or not text.strip():
            continue
        try:
            values[key] = float(text)
        except ValueError:
            raise StudyError(f"{variable}={text!r} is not a number of seconds") from None
    try:
        return LeaseTiming(**values)
    except ValueError as error:
        from hptransfer.errors import explain_fields

        raise StudyError(f"HPTRANSFER_HEARTBEAT_S / HPTRANSFER_GRACE_S: "
                         f"{explain_fields(error)}; unset them for the defaults "
                         f"({DEFAULT_HEARTBEAT_S:g} s and {DEFAULT_GRACE_S:g} s)") from None


# ---- who a process is ------------------------------------------------------------------------

class Process(NamedTuple):
    """A process, as another process can recognise it."""

    host: str  # the host name, for people
    place: str  # host name, boot and pid namespace: where ``pid`` names this process
    pid: int
    started: float | None  # its start time (clock ticks since boot on Linux), None if unknown


def _read(path: str) -> str:
    try:
        with open(path) as handle:
            return handle.read().strip()
    except OSError:
        return ""


def _start_time(pid: int) -> float | None:
    """When process ``pid`` started, in the OS's own clock; None if it does not exist or
    this OS does not say."""
    stat = _read(f"/proc/{pid}/stat")
    if stat:  # Linux: field 22, counted after the command name, which may hold spaces
        return float(stat.rsplit(")", 1)[1].split()[19])
    try:
        import psutil
    except ImportError:
        return None
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


@functools.cache
def _place() -> str:
    namespace = ""
    try:
        namespace = str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        pass
    return f"{socket.gethostname()}/{_read('/proc/sys/kernel/random/boot_id')}/{namespace}"


def this_process() -> Process:
    pid = os.getpid()  # not cached: a forked child is another process
    return Process(host=socket.gethostname(), place=_place(), pid=pid, started=_start_time(pid))


def _running(pid: int, started: float | None) -> bool:
    """Whether process ``pid`` of this machine runs, and is the one that started at
    ``started`` (None: any process with that pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, under another user
    if started is None:
        return True
    now = _start_time(pid)
    return now is None or now == started


_HELD: set[str] = set()  # the tokens of the leases this process holds now
_HELD_LOCK = threading.Lock()


def holder_alive(holder: dict[str, Any], beat: float | None, grace_s: float) -> bool:
    """Whether the process a lease names (``host``, ``place``, ``pid``, ``started``,
    ``token``) still holds it (module docstring); ``beat``: its last heartbeat."""
    if holder.get("token") == RELEASED:  # given up: its process may live on, its lease not
        return False
    me = this_process()
    pid = holder.get("pid")
    if pid is not None and holder.get("place") == me.place:
        if int(pid) == me.pid and holder.get("started") == me.started:
            with _HELD_LOCK:  # ours: held while a live Heartbeat or PlannerLease has it
                return holder.get("token") in _HELD
        return _running(int(pid), holder.get("started"))
    if pid is not None and holder.get("place") is None and holder.get("host") == me.host:
        # a lease written before places were recorded: the pid alone, then the heartbeat
        if int(pid) != me.pid and not _running(int(pid), None):
            return False
    return beat is not None and time.time() - beat <= grace_s


def _holder(process: Process, token: str) -> dict[str, Any]:
    return {"host": process.host, "place": process.place, "pid": process.pid,
            "started": process.started, "token": token}


class _Beat:
    """A daemon thread that calls ``write`` every ``heartbeat_s`` until stopped; a failed
    write is retried sooner and reported once per streak of failures."""

    def __init__(self, write, what: str, heartbeat_s: float) -> None:
        self._write, self._what, self._every = write, what, heartbeat_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"lease {what}")
        self._thread.start()

    def _run(self) -> None:
        from optuna.exceptions import UpdateFinishedTrialError

        delay, failed_since = self._every, None
        while not self._stop.wait(delay):
            try:
                self._write()
            except UpdateFinishedTrialError:
                return  # finished, or taken over: its owner finds out at its next write
            except Exception as error:  # SQLite busy past its timeout, a server blip
                if failed_since is None:
                    failed_since = time.monotonic()
                    warnings.warn(f"the heartbeat of {self._what} failed ({type(error).__name__}:"
                                  f" {error}); retrying", LeaseWarning, stacklevel=1)
                delay = min(self._every, 1.0)
                continue
            if failed_since is not None:
                warnings.warn(f"the heartbeat of {self._what} is written again, after "
                              f"{time.monotonic() - failed_since:.0f} s of failures",
                              LeaseWarning, stacklevel=1)
                failed_since = None
            delay = self._every

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Heartbeat:
    """Holds a running trial's lease: writes who holds it, then refreshes its heartbeat
    until :meth:`stop`. Raises Optuna's ``UpdateFinishedTrialError`` when the trial is
    already finished (the lifecycle turns it into ``TakenOver``)."""

    def __init__(self, storage, trial_id: int, timing: LeaseTiming | None = None) -> None:
        timing = timing or lease_timing()
        self._storage, self._trial_id = storage, trial_id
        self._token = uuid.uuid4().hex
        with _HELD_LOCK:
            _HELD.add(self._token)
        try:
            holder = _holder(this_process(), self._token)
            for key, attr in (("place", _PLACE), ("started", _STARTED), ("token", _TOKEN),
                              ("host", _HOST), ("pid", _PID)):
                storage.set_trial_system_attr(trial_id, attr, holder[key])
            storage.set_trial_system_attr(trial_id, _BEAT, time.time())
        except BaseException:
            self._release()
            raise
        self._beat = _Beat(lambda: storage.set_trial_system_attr(trial_id, _BEAT, time.time()),
                           f"trial id {trial_id}", timing.heartbeat_s)

    def _release(self) -> None:
        with _HELD_LOCK:
            _HELD.discard(self._token)

    def stop(self, *, give_up: bool = False) -> None:
        """Stop beating. ``give_up``: the trial is left unfinished while this process lives
        on (an error between the run and its record), so say so in the lease: any worker
        may take the trial over at once instead of waiting for this process to end."""
        self._beat.stop()
        self._release()
        if give_up:
            _best_effort(lambda: self._storage.set_trial_system_attr(
                self._trial_id, _TOKEN, RELEASED), f"trial id {self._trial_id}")


def _best_effort(write, what: str) -> None:
    """A last write of a lease that is going away: a finished trial refuses it (nothing to
    say), a failing storage is reported (the holder's end is then found as before: when its
    process ends, or its heartbeat passes the grace)."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        write()
    except UpdateFinishedTrialError:
        pass
    except Exception as error:
        warnings.warn(f"could not release the lease of {what} ({type(error).__name__}: "
                      f"{error}); it lapses when this process ends", LeaseWarning,
                      stacklevel=2)


def trial_holder_alive(trial: optuna.trial.FrozenTrial, timing: LeaseTiming) -> bool:
    """Whether a RUNNING trial's holder still holds it.

    A trial whose holder never wrote who it is (or wrote only part of it) was claimed by a
    process that died between the claim and the writes, which are milliseconds apart: it
    has only its start time to go by, and it is gone once ``IDENTITY_BEATS`` heartbeats
    have passed since (not the whole grace: the next tune would otherwise wait minutes for
    a trial nobody runs)."""
    attrs = trial.system_attrs
    holder = {key: attrs.get(attr) for key, attr in (
        ("host", _HOST), ("place", _PLACE), ("pid", _PID), ("started", _STARTED),
        ("token", _TOKEN))}
    beat = attrs.get(_BEAT)
    if holder["pid"] is None:  # written last (Heartbeat): without it the identity is cut
        start = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
        window = min(timing.grace_s, IDENTITY_BEATS * timing.heartbeat_s)
        return time.time() - max(start, beat or start) <= window
    if beat is None:
        beat = trial.datetime_start.timestamp() if trial.datetime_start else time.time()
    return holder_alive(holder, beat, timing.grace_s)


class PlannerLease:
    """Says, every ``heartbeat_s`` from a daemon thread, that this process plans a ladder
    width's rounds (its followers wait for rounds while it lives) until :meth:`stop`."""

    def __init__(self, study: optuna.Study, timing: LeaseTiming | None = None) -> None:
        timing = timing or lease_timing()
        self._study, self._token = study, uuid.uuid4().hex
        self._holder = _holder(this_process(), self._token)
        with _HELD_LOCK:
            _HELD.add(self._token)
        try:
            self._write()
        except BaseException:
            self._release()
            raise
        self._beat = _Beat(self._write, f"the ladder planner of {study.study_name}",
                           timing.heartbeat_s)

    def _write(self) -> None:
        write_planner(self._study, {**self._holder, "beat": time.time()})

    def _release(self) -> None:
        with _HELD_LOCK:
            _HELD.discard(self._token)

    def stop(self) -> None:
        """Stop planning, and say so: followers stop waiting for rounds at once, even while
        this process lives on (it may be waiting for them to exit)."""
        self._beat.stop()
        self._release()
        _best_effort(lambda: write_planner(self._study, {**self._holder, "token": RELEASED,
                                                         "beat": time.time()}),
                     f"the ladder planner of {self._study.study_name}")


def planner_alive(study: optuna.Study, grace_s: float) -> bool | None:
    """Whether a process plans this ladder width now: True, False (it stopped or died), or
    None when no process ever planned it."""
    planner = read_planner(study)
    if planner is None:
        return None
    return holder_alive(planner, planner.get("beat"), grace_s)


def record_worker(storage, trial_id: int) -> None:
    """Note which process trains a trial whose lease another process holds (a Ray worker:
    the driver holds the lease, since Ray, not hptransfer, retries a dead worker)."""
    storage.set_trial_system_attr(trial_id, _WORKER, f"{socket.gethostname()}:{os.getpid()}")

"""The Ray cluster hptransfer can run on: connecting, and the storage every node can share.

Whatever runs on Ray, the Optuna storage stays the one record: Ray schedules, retries and
places work; the storage says what ran.

What must be shared: every Ray worker opens the study's storage itself. A SQLite file or a
journal file on the driver's disk is invisible to workers on other machines, so on a
multi-node cluster (or through a remote ``ray://`` client) hptransfer refuses file storage
and asks for a database server (PostgreSQL) instead, before anything runs.
"""

from __future__ import annotations

import json
import os

from hptransfer.errors import StudyError
from hptransfer.study.storage import normalize, storage_kind

__all__ = ["RAY_INSTALL", "check_shared_storage", "connect", "require_ray"]

RAY_INSTALL = 'pip install "hptransfer[ray]"'
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def require_ray():
    """The ``ray`` module, or a :class:`StudyError` with the exact install line."""
    try:
        import ray
    except ImportError:
        raise StudyError(f"--backend ray needs Ray, which is not installed: {RAY_INSTALL}"
                         ) from None
    return ray


def connect(address: str | None = None):
    """Connect this process to a Ray cluster (once) and return the ``ray`` module.

    ``address``: None finds a running cluster (``RAY_ADDRESS`` or one started by ``ray
    start`` on this machine) and else starts a private local one; ``auto`` requires a running
    cluster; ``HOST:PORT`` or ``ray://HOST:10001`` name one. Workers inherit
    ``HPTRANSFER_THREADS`` and ``HPTRANSFER_HOME`` so that they train and store like this
    process would.
    """
    ray = require_ray()
    if ray.is_initialized():
        return ray
    # Inside a Ray Job, the job's runtime env already sets its env vars on every worker, and
    # Ray refuses a driver runtime env that sets one of them again: pass only the others.
    job = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}")
    taken = set((job.get("runtime_env") or {}).get("env_vars") or {})
    env = {k: os.environ[k] for k in ("HPTRANSFER_THREADS", "HPTRANSFER_HOME",
                                      "HPTRANSFER_HEARTBEAT_S", "HPTRANSFER_GRACE_S")
           if k in os.environ and k not in taken}
    try:
        ray.init(address=address, runtime_env={"env_vars": env} if env else None,
                 logging_level="WARNING", log_to_driver=True, include_dashboard=False
                 if address is None else None)
    except ConnectionError as error:
        raise StudyError(f"cannot connect to the Ray cluster at {address!r}: {error}; start "
                         f"one with `ray start --head`, or omit --address to start a local "
                         f"one") from None
    return ray


def _remote_client(address: str | None) -> bool:
    if not address or not address.startswith("ray://"):
        return False
    host = address[len("ray://"):].rsplit(":", 1)[0].strip("[]")
    return host not in _LOOPBACK


def check_shared_storage(url: str | None, address: str | None = None) -> None:
    """Refuse a storage on the driver's disk when Ray workers may run on other machines.

    Call after :func:`connect`. SQLite and journal files are fine on a single-node cluster
    (every worker sees the same disk); otherwise the error names what to use instead.
    """
    ray = require_ray()
    url = normalize(url)
    kind = storage_kind(url)
    if kind not in ("sqlite", "journal"):
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    reason = None
    if len(nodes) > 1:
        reason = f"the Ray cluster has {len(nodes)} nodes"
    elif _remote_client(address):
        reason = f"the Ray cluster at {address} is another machine"
    if reason is not None:
        raise StudyError(
            f"the study storage {url} is a {kind} file on this machine, but {reason}: workers "
            f"elsewhere cannot open it, and each would record trials into its own copy. Use "
            f"a database server every node can reach, e.g. --storage "
            f"postgresql://USER:PASSWORD@HOST:5432/DB (pip install \"hptransfer[postgres]\"); "
            f"see integrations/ray/README.md")

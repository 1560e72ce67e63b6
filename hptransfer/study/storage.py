"""Where studies live: resolving a storage URL into an Optuna storage.

The Optuna storage is the single record of every trial. Accepted forms:

- nothing: a SQLite file ``studies.db`` in ``$HPTRANSFER_HOME`` (default ``~/.hptransfer``);
- ``sqlite:///path/to/file.db`` or a plain path ending in ``.db`` / ``.sqlite`` (one machine,
  a few processes);
- ``postgresql://…`` / ``mysql://…`` (many workers, several machines);
- ``journal:///path/to/file.log`` or a plain path ending in ``.log`` / ``.jsonl``
  (Optuna's JournalStorage, an append-only file that is safe on NFS).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.errors import StorageError

if TYPE_CHECKING:
    import optuna

__all__ = ["default_storage_url", "home", "local_path", "missing_local_file", "normalize",
           "open_storage", "storage_kind"]


def home() -> Path:
    """hptransfer's local folder: ``$HPTRANSFER_HOME``, else ``~/.hptransfer``."""
    return Path(os.environ.get("HPTRANSFER_HOME") or Path.home() / ".hptransfer")


def default_storage_url() -> str:
    return f"sqlite:///{home() / 'studies.db'}"


def normalize(url: str | None) -> str:
    """The canonical URL for ``url`` (plain paths become sqlite:/// or journal:///)."""
    if not url:
        return default_storage_url()
    if "://" in url:
        return url
    path = Path(url).expanduser().resolve()
    if path.suffix in (".log", ".jsonl"):
        return f"journal:///{path}"
    if path.suffix in (".db", ".sqlite", ".sqlite3"):
        return f"sqlite:///{path}"
    raise StorageError(
        f"storage {url!r} is neither a URL nor a path ending in .db/.sqlite (SQLite) or "
        f".log/.jsonl (journal file); examples: studies.db, sqlite:///studies.db, "
        f"postgresql://user:pass@host/db, journal:///shared/studies.log")


def storage_kind(url: str) -> str:
    """``sqlite``, ``journal`` or the RDB dialect (``postgresql``, ``mysql``)."""
    scheme = normalize(url).split("://", 1)[0]
    return scheme.split("+", 1)[0]


def local_path(url: str) -> Path:
    """The file of a ``sqlite:///`` or ``journal:///`` URL."""
    return Path(url.split(":///", 1)[1] if ":///" in url else url.split("://", 1)[1])


def missing_local_file(url: str | None) -> Path | None:
    """The path of a local SQLite or journal file that does not exist, else None: opening
    it would create an empty one, which a command that only reads must not do."""
    url = normalize(url)
    if storage_kind(url) not in ("sqlite", "journal") or ":memory:" in url:
        return None
    path = local_path(url)
    return None if path.exists() else path


def _with_driver(url: str) -> str:
    """``postgresql://`` names no driver, and SQLAlchemy's default changed (2.0: psycopg2,
    2.1: psycopg 3): name the one that is installed (``hptransfer[postgres]`` installs
    psycopg2)."""
    import importlib.util

    scheme, rest = url.split("://", 1)
    if scheme != "postgresql":
        return url
    for driver in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(driver) is not None:
            return f"postgresql+{driver}://{rest}"
    return url


def open_storage(url: str | None) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``; parent folders of local files are created."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    url = normalize(url)
    kind = storage_kind(url)
    if kind == "journal":
        path = local_path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    if kind == "sqlite":
        local_path(url).parent.mkdir(parents=True, exist_ok=True)
        # several worker processes write one file: wait for the lock instead of failing
        return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}})
    try:
        return RDBStorage(_with_driver(url))
    except (ImportError, ModuleNotFoundError) as error:
        extra = "postgres" if kind.startswith("postgres") else kind
        raise StorageError(f"storage {kind} needs its database driver: "
                           f"pip install 'hptransfer[{extra}]' ({error})") from error
    except optuna.exceptions.StorageInternalError as error:
        raise StorageError(f"cannot open storage {url}: {error}") from error

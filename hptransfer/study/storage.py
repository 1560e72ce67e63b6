"""The one front door to a study's storage: validate the URL, check the file, open it.

The Optuna storage is the single record of every trial. Accepted forms:

- nothing: a SQLite file ``studies.db`` in ``$HPTRANSFER_HOME`` (default ``~/.hptransfer``);
- a path ending in ``.db`` / ``.sqlite`` / ``.sqlite3``, or ``sqlite:///relative.db`` /
  ``sqlite:////absolute.db`` (SQLAlchemy's form; one machine, a few processes);
- a path ending in ``.log`` / ``.jsonl``, or ``journal:///absolute/path.log`` (Optuna's
  JournalStorage: an append-only file, safe on NFS);
- ``postgresql://USER:PASSWORD@HOST:PORT/DB`` / ``mysql://…`` (many workers and machines).

Every command says what it needs (:class:`Access`): a command that only reads never
creates or changes a file, a command that joins a study needs it to exist, and only a
tune creates one. Problems are :class:`~hptransfer.errors.StorageError` messages that say
what is wrong, where, and how to fix it: a malformed URL, an in-memory storage for work
that must last, a folder, an unwritable place, a file that is not SQLite, a corrupted
SQLite file or journal (never modified: the message gives the recovery step), a journal
whose last record was cut by a crash (read, never written after), an unreachable server,
and a disk that fills while a command writes: the message names the file, SQLite rolls its
transaction back and a journal's cut append is undone, so the storage stays whole.
Several processes creating one new SQLite file at once take turns (a file lock), so the
schema is created once; a reader (``status`` polling a tune that is starting) waits for
that lock and never creates tables itself.
"""

from __future__ import annotations

import os
import re
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from hptransfer.errors import StorageError

if TYPE_CHECKING:
    import optuna

__all__ = ["Access", "can_write_in", "default_storage_url", "home", "local_path",
           "missing_local_file", "normalize", "open_storage", "serialize_sqlite",
           "storage_kind", "unwritable_folder"]

_SQLITE_HEADER = b"SQLite format 3\x00"
_KINDS = ("sqlite", "journal", "postgresql", "mysql")
_EXAMPLES = ("studies.db, sqlite:////abs/studies.db, studies.log, journal:///shared/studies.log, "
             "postgresql://user:pass@host:5432/db")


class Access(str, Enum):
    """What a command does with a storage."""

    READ = "read"  # status, predict, plot, report: must exist; never written
    UPDATE = "update"  # worker, confirm: must exist (a study to join); written
    CREATE = "create"  # tune, study run: created when missing


def home() -> Path:
    """hptransfer's local folder: ``$HPTRANSFER_HOME``, else ``~/.hptransfer``."""
    return Path(os.environ.get("HPTRANSFER_HOME") or Path.home() / ".hptransfer")


def default_storage_url() -> str:
    return f"sqlite:///{home() / 'studies.db'}"


def _hide_password(url: str) -> str:
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _in_memory(url: str) -> bool:
    return url in ("sqlite://", "sqlite:///:memory:") or url.startswith("sqlite:///:memory:")


def normalize(url: str | None) -> str:
    """The canonical URL for ``url``: plain paths become ``sqlite:////abs`` or
    ``journal:///abs``; a malformed URL is refused with the forms that work."""
    if not url:
        return default_storage_url()
    if "://" not in url:
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:/?[^/]", url) and not re.match(r"^[A-Za-z]:",
                                                                              url[:2]):
            scheme = url.split(":", 1)[0]
            raise StorageError(f"storage {url!r} looks like a URL with too few slashes: did "
                               f"you mean {scheme}:///{url.split(':', 1)[1].lstrip('/')}? "
                               f"(forms: {_EXAMPLES})")
        path = Path(url).expanduser().resolve()
        if path.suffix in (".log", ".jsonl"):
            return f"journal://{path}"
        if path.suffix in (".db", ".sqlite", ".sqlite3"):
            return f"sqlite:///{path}"
        raise StorageError(f"storage {url!r} is neither a URL nor a path ending in .db/.sqlite "
                           f"(SQLite) or .log/.jsonl (journal file); examples: {_EXAMPLES}")
    scheme, rest = url.split("://", 1)
    kind = scheme.split("+", 1)[0]
    if kind not in _KINDS:
        raise StorageError(f"storage {_hide_password(url)!r}: unknown kind {scheme!r}; use "
                           f"sqlite, journal, postgresql or mysql (examples: {_EXAMPLES})")
    if kind == "sqlite" and not _in_memory(url):
        if not rest.startswith("/") or rest == "/":
            raise StorageError(f"storage {url!r} names no file: use sqlite:///relative.db or "
                               f"sqlite:////absolute/path.db")
        file, _, query = rest[1:].partition("?")
        path = Path(file).expanduser()
        resolved = f"sqlite:///{path.resolve()}"
        return f"{resolved}?{query}" if query else resolved
    if kind == "journal":
        if not rest.strip("/"):
            raise StorageError(f"storage {url!r} names no file: use journal:///path/to/file.log")
        # file-URL form: everything after journal:// is the path (journal:///abs is /abs)
        path = Path("/" + rest.lstrip("/")) if rest.startswith("/") else Path(rest).resolve()
        return f"journal://{path}"
    return url


def storage_kind(url: str) -> str:
    """``sqlite``, ``journal`` or the RDB dialect (``postgresql``, ``mysql``)."""
    scheme = normalize(url).split("://", 1)[0]
    return scheme.split("+", 1)[0]


def local_path(url: str) -> Path:
    """The file of a SQLite or journal URL (as :func:`normalize` writes them)."""
    url = normalize(url)
    rest = url.split("://", 1)[1]
    if url.startswith("sqlite"):
        return Path(rest[1:].partition("?")[0])
    return Path(rest)


def missing_local_file(url: str | None) -> Path | None:
    """The path of a local SQLite or journal file that does not exist, else None: opening
    it would create an empty one, which a command that only reads must not do."""
    url = normalize(url)
    if storage_kind(url) not in ("sqlite", "journal") or _in_memory(url):
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


def can_write_in(folder: Path) -> bool:
    """Whether a file can be created in ``folder``: tried, since permission bits do not tell
    (root passes them all, and still cannot write in /proc)."""
    import tempfile

    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".hptransfer-probe-"):
            return True
    except OSError:
        return False


def unwritable_folder(folder: Path) -> Path | None:
    """What stops files from being written in ``folder`` (created with its parents when
    missing): itself, or its nearest existing parent, when that is not a folder this user
    can write in (a file, /proc, a read-only mount); None when nothing does."""
    place = next((p for p in [folder, *folder.parents] if p.exists()), Path("."))
    return None if place.is_dir() and can_write_in(place) else place


def _check_place(path: Path, access: Access, kind: str) -> None:
    """The file exists (or may be created) and is a file hptransfer can use."""
    if path.is_dir():
        raise StorageError(f"storage {path} is a folder: give a file in it, e.g. "
                           f"{path / ('studies.db' if kind == 'sqlite' else 'studies.log')}")
    if not path.exists():
        if access is not Access.CREATE:
            raise StorageError(f"there is no storage at {path}: nothing has been recorded "
                               f"there (check --storage, or create the study with hptransfer "
                               f"tune --storage {path})")
        folder = unwritable_folder(path.parent)
        if folder is not None:
            raise StorageError(f"cannot create the storage {path}: {folder} is not a folder "
                               f"you can write to; give --storage a path you can write")
        return
    if not os.access(path, os.R_OK):
        raise StorageError(f"cannot read the storage {path}: permission denied")
    if access is not Access.READ and not os.access(path, os.W_OK):
        raise StorageError(f"the storage {path} is read-only: hptransfer needs to write to it "
                           f"(copy it somewhere writable and give --storage the copy)")


def _check_sqlite(path: Path) -> None:
    """An existing file is SQLite and intact; checked read-only, never modified — except
    that a transaction a killed process left half-written (a *hot journal* beside the file)
    is rolled back first, as SQLite does for the first connection that may write: the file
    then holds exactly what was last committed. A read-only connection cannot do that
    rollback, and would call an intact file unreadable ("attempt to write a readonly
    database")."""
    import sqlite3

    with open(path, "rb") as handle:
        header = handle.read(len(_SQLITE_HEADER))
    if not header:
        return  # an empty file is an empty database
    if header != _SQLITE_HEADER:
        raise StorageError(f"the storage {path} is not an SQLite database (its first bytes "
                           f"are {header[:8]!r}): give a .db file hptransfer made, or a new "
                           f"path")
    recover = (f"it was not modified. Recover what it holds with: sqlite3 {path} .recover "
               f"| sqlite3 {path.with_suffix('.recovered.db')}, or restore a backup")
    journal = path.with_name(f"{path.name}-journal")
    hot = journal.exists() and journal.stat().st_size > 0
    if hot and not os.access(path, os.W_OK):
        raise StorageError(f"the storage {path} holds a transaction a killed process left "
                           f"unfinished ({journal.name} beside it), and rolling it back needs "
                           f"write access to the file: make it writable, or copy both files "
                           f"somewhere writable and give --storage the copy")
    try:
        connection = sqlite3.connect(f"file:{path}?mode={'rw' if hot else 'ro'}", uri=True,
                                     timeout=60)
        try:
            result = [row[0] for row in connection.execute("PRAGMA quick_check")]
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise StorageError(f"the storage {path} is corrupted (sqlite: {error}); {recover}"
                           ) from None
    if result != ["ok"]:
        raise StorageError(f"the storage {path} is corrupted (sqlite: {result[0]}); "
                           f"{recover}")


def _check_journal(path: Path, access: Access) -> None:
    """Every record of an existing journal parses; a cut last record (a crash mid-write)
    may be read but is never written after."""
    import json

    data = path.read_bytes()
    if not data:
        return
    torn = not data.endswith(b"\n")
    complete = data.split(b"\n")[:-1]  # the last element is b"" or the cut record
    for number, line in enumerate(complete, start=1):
        try:
            json.loads(line)
        except ValueError:
            raise StorageError(
                f"the journal {path} is corrupted at line {number} (not a JSON record); it "
                f"was not modified. Keep a copy, then cut the file before that line "
                f"(head -n {number - 1} {path} > {path.with_suffix('.recovered.log')}) and "
                f"use the copy") from None
    if torn and access is not Access.READ:
        raise StorageError(
            f"the journal {path} ends in a cut record (the process writing it was killed "
            f"mid-write); hptransfer does not append after it, since the next record would "
            f"join the cut one. Keep a copy, then drop the last line: head -n "
            f"{len(complete)} {path} > {path}.fixed && mv {path}.fixed {path} (the cut "
            f"trial is retried)")


def _disk_full(path: Path, cause: str) -> StorageError:
    return StorageError(f"the disk holding the storage {path} is full ({cause}): what was being "
                        f"written was not recorded, and the storage holds everything recorded "
                        f"before (read it as usual); free space, then run the same command "
                        f"again")


def _journal_backend(path: Path):
    """Optuna's journal file, whose append never leaves a cut record behind: a write that
    fails (a full disk) is undone under the journal's lock, the file truncated back to
    where it ended (which frees space rather than needing it), and raised as a
    :class:`StorageError` naming the file. Optuna's own append would leave the part it
    wrote, a cut record that stops every later write (:func:`_check_journal`)."""
    import errno
    import json

    from optuna.storages.journal import JournalFileBackend
    from optuna.storages.journal._file import get_lock_file

    class Journal(JournalFileBackend):
        def append_logs(self, logs: list[dict]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs)
            try:
                with get_lock_file(self._lock):
                    descriptor = os.open(self._file_path, os.O_WRONLY | os.O_APPEND)
                    try:
                        end = os.fstat(descriptor).st_size
                        try:
                            rest = memoryview(text.encode("utf-8"))
                            while rest:  # os.write may write part of it
                                rest = rest[os.write(descriptor, rest):]
                            os.fsync(descriptor)
                        except OSError:
                            os.ftruncate(descriptor, end)
                            raise
                    finally:
                        os.close(descriptor)
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _disk_full(path, error.strerror or str(error)) from None
                raise StorageError(f"cannot write the journal {path}: "
                                   f"{error.strerror or error}; the record being written was "
                                   f"undone, the journal holds everything before it"
                                   ) from None

    return Journal(str(path))


def _name_a_full_disk(engine, path: Path) -> None:
    """SQLite's "database or disk is full" as a :class:`StorageError` naming the file;
    Optuna would report it as data "exceeding max length". SQLite has rolled the
    transaction back: the file holds what was committed."""
    from sqlalchemy import event

    @event.listens_for(engine, "handle_error")
    def _full(context) -> None:
        cause = str(context.original_exception)
        if "database or disk is full" in cause:
            raise _disk_full(path, cause)


def _open_sqlite(url: str, path: Path, access: Access):
    """RDBStorage on an SQLite file, opened under a lock on the file: a creator (a tune)
    holds it alone while it checks the file and creates the schema; readers and joiners
    share it, so they wait for a creator mid-schema instead of reading half a schema.

    Why: Optuna's RDBStorage creates every missing table when it opens, with no lock
    between *does it exist* and *create it*; a reader opening the file while a tune was
    creating it made the tune fail ("table trial_params already exists"). Only a creator
    may create the schema now; a reader or joiner finding none gets a clear error, and a
    file that only a reader opened is left unchanged."""
    import fcntl

    from optuna.storages import RDBStorage

    creating = access is Access.CREATE
    # an empty file is an empty database; a reader may hold no write permission (flock
    # needs none)
    with open(path, "ab" if creating else "rb") as handle:
        _lock(handle, fcntl.LOCK_EX if creating else fcntl.LOCK_SH, path)
        try:
            _check_sqlite(path)
            if not creating and not _has_schema(path):
                raise StorageError(f"nothing is recorded in the storage {path} (it holds no "
                                   f"hptransfer study tables): check --storage, or tune a "
                                   f"study into it")
            return RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 60}},
                              skip_table_creation=not creating)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _lock(handle, kind: int, path: Path, timeout_s: float = 60.0) -> None:
    """flock ``handle``, waiting at most ``timeout_s`` (SQLite's own busy timeout here):
    a process stopped while it held the lock must not hang every other command."""
    import fcntl
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(handle, kind | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise StorageError(f"another process has held the storage {path} for "
                                   f"{timeout_s:.0f} s while opening it (a tune creating "
                                   f"it, stopped or very slow): let it finish, or stop it, "
                                   f"and run this again") from None
            time.sleep(0.05)


def _has_schema(path: Path) -> bool:
    """Whether an SQLite file holds Optuna's tables (read-only look)."""
    import sqlite3

    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
    try:
        return connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                  "name = 'version_info'").fetchone() is not None
    finally:
        connection.close()


def serialize_sqlite(storage) -> None:
    """Make every transaction of an Optuna storage on SQLite take the write lock when it
    begins (``BEGIN IMMEDIATE``); a no-op for any other storage, and when already done.

    Why: Python's sqlite3 driver begins a transaction only at the first write, so Optuna's
    compare-and-set on a trial's state (read it, then write it: how a waiting trial is
    claimed, and a finished or taken-over one refused) reads outside any transaction. Two
    processes can then both read WAITING and both write RUNNING: both claim the trial, and
    the one that finishes second crashes on a finished trial. Measured: 3 processes claiming
    300 enqueued trials made 27 double claims; with the lock taken first, none. Other
    processes wait for the lock (SQLite's busy timeout, 60 s here) instead of racing.
    PostgreSQL and MySQL lock the row (``SELECT … FOR UPDATE``); a journal orders its log.
    """
    from optuna.storages import RDBStorage

    backend = getattr(storage, "_backend", storage)  # Optuna wraps an RDBStorage in a cache
    if not isinstance(backend, RDBStorage):
        return
    engine = backend.engine
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:") \
            or getattr(engine, "_hptransfer_serialized", False):
        return
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_with_the_write_lock(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections pooled before the hooks were made without them
    engine._hptransfer_serialized = True


def open_storage(url: str | None, access: Access = Access.CREATE
                 ) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, opened for ``access`` (module docstring)."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage

    url = normalize(url)
    kind = storage_kind(url)
    if _in_memory(url):
        raise StorageError(f"storage {url!r} is in memory: it starts empty and every trial "
                           f"written to it is lost when the process ends; give a file "
                           f"(studies.db) or a server (an optuna.storages.InMemoryStorage "
                           f"object is what a test wants)")
    if kind in ("sqlite", "journal"):
        path = local_path(url)
        _check_place(path, access, kind)
        if path.exists():
            if kind == "journal":
                _check_journal(path, access)
            if access is Access.READ and path.stat().st_size == 0:
                raise StorageError(f"nothing is recorded in the storage {path} (an empty "
                                   f"file): check --storage, or tune a study into it")
        elif access is Access.CREATE:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if kind == "journal":
                return JournalStorage(_journal_backend(path))
            storage = _open_sqlite(url, path, access)  # checks the file under its lock
            _name_a_full_disk(storage.engine, path)
            if access is not Access.READ:
                # a reader takes no write lock: it must neither wait behind a writer (a
                # frozen or busy tune holding it) nor make writers wait behind it
                serialize_sqlite(storage)
            return storage
        except StorageError:
            raise
        except OSError as error:
            raise StorageError(f"cannot open the storage {path}: {error.strerror or error}"
                               ) from None
        except Exception as error:  # what SQLite or Optuna say about a damaged file
            raise StorageError(f"cannot open the storage {path}: {type(error).__name__}: "
                               f"{error}; it was not modified") from None
    shown = _hide_password(url)
    try:
        return RDBStorage(_with_driver(url))
    except (ImportError, ModuleNotFoundError) as error:
        extra = "postgres" if kind.startswith("postgres") else kind
        raise StorageError(f"storage {kind} needs its database driver: "
                           f"pip install 'hptransfer[{extra}]' ({error})") from None
    except optuna.exceptions.StorageInternalError as error:
        raise StorageError(f"cannot open storage {shown}: {error}") from None
    except Exception as error:  # SQLAlchemy: refused connection, bad credentials, no DB
        cause = str(getattr(error, "orig", error)).strip().splitlines()[0]
        raise StorageError(f"cannot connect to the storage {shown}: {cause}; is the server "
                           f"running, reachable from here, and the database created?"
                           ) from None

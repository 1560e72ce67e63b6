"""The token cache: data that is not flat ids on disk, streamed once into flat ids.

A Parquet/Arrow table (:mod:`hptransfer.data.parquet`) or a text file with a tokenizer
(:mod:`hptransfer.data.text`) is turned into ids once, into a folder
``$HPTRANSFER_HOME/cache/tokens/KEY/`` (flat little-endian id files and ``meta.json``), then
memory-mapped by every process that loads it: a worker never holds the source in RAM, and
never pays the tokenizer again. ``KEY`` hashes what the ids depend on (the source files'
resolved paths, sizes and modification times, the tokenizer file's hash, the format's own
options), so a changed source is streamed again.

A folder is written under a temporary name and renamed once complete, so a source that fails
to read, or a process killed while writing, leaves no half-written entry (a scratch folder
of a killed writer is removed by the next :func:`clear`). When an entry is written, the
entries of older versions of the *same* source files (same paths, another size or time) are
removed: they can never be read again. ``hptransfer cache list`` / ``hptransfer cache
clear`` show and remove the rest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hptransfer.errors import CorpusError

__all__ = ["CacheEntry", "cache_root", "clear", "entries", "folder_for", "write_entry"]

META = "meta.json"
_SCRATCH = ".partial-"


def cache_root() -> Path:
    """``$HPTRANSFER_HOME/cache/tokens`` (the home as :func:`hptransfer.study.storage.home`
    reads it, a layer above data)."""
    home = Path(os.environ.get("HPTRANSFER_HOME") or Path.home() / ".hptransfer")
    return home / "cache" / "tokens"


def folder_for(version: str, files: Sequence[Path], *options: object) -> Path:
    """The entry folder of ``files`` (by resolved path, size and modification time) read
    with ``options`` (each part of the key by its ``repr``), for a format at ``version``."""
    key = hashlib.sha256(version.encode())
    for f in files:
        stat = f.stat()
        key.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0".encode())
    for option in options:
        key.update(f"{option!r}\0".encode())
    return cache_root() / key.hexdigest()[:32]


def write_entry(folder: Path, files: Sequence[Path], write: Callable[[Path], dict[str, Any]]
                ) -> dict[str, Any]:
    """Create the entry ``folder``: ``write(scratch)`` writes its id files into ``scratch``
    and returns its meta (saved as ``meta.json`` with the source ``files`` and their sizes
    and times); the scratch folder is renamed to ``folder`` once complete. Another process
    that wrote the same entry first wins (its ids are the same). Returns the entry's meta."""
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=_SCRATCH, dir=folder.parent))
    except OSError as error:
        raise CorpusError(f"cannot write the token cache under {folder.parent} "
                          f"({error.strerror or error}): set HPTRANSFER_HOME to a writable "
                          f"folder (the cache is $HPTRANSFER_HOME/cache/tokens)") from None
    try:
        meta = write(scratch)
        meta = {**meta, "sources": [_source(f) for f in files], "created": time.time()}
        (scratch / META).write_text(json.dumps(meta, indent=1))
        try:
            os.replace(scratch, folder)
        except OSError:  # another process cached the same source first: theirs is the same
            if not (folder / META).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    _remove_stale(folder, files)
    return json.loads((folder / META).read_text())


def read_meta(folder: Path) -> dict[str, Any] | None:
    """An entry's meta, or None when it has none (not written, or not complete)."""
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None


def _source(f: Path) -> dict[str, Any]:
    stat = f.stat()
    return {"path": str(f.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _remove_stale(kept: Path, files: Sequence[Path]) -> None:
    """Remove entries of the same source paths whose files have changed since: the key of
    a changed file is another folder, so these can never be read again."""
    paths = {str(f.resolve()) for f in files}
    for entry in entries():
        if entry.folder == kept or not entry.stale:
            continue
        if paths & {s["path"] for s in entry.sources}:
            shutil.rmtree(entry.folder, ignore_errors=True)


@dataclass(frozen=True)
class CacheEntry:
    """One cached source: where, what it was made from, its size on disk."""

    folder: Path
    sources: tuple[dict[str, Any], ...]
    bytes: int
    created: float | None

    @property
    def stale(self) -> bool:
        """A source file is gone, or has changed since the entry was written."""
        for source in self.sources:
            try:
                stat = os.stat(source["path"])
            except OSError:
                return True
            if (stat.st_size, stat.st_mtime_ns) != (source["size"], source["mtime_ns"]):
                return True
        return False


def entries() -> list[CacheEntry]:
    """Every complete entry of the cache, oldest first."""
    root = cache_root()
    if not root.is_dir():
        return []
    found = []
    for folder in root.iterdir():
        meta = None if folder.name.startswith(_SCRATCH) else read_meta(folder)
        if meta is None:
            continue
        size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        found.append(CacheEntry(folder=folder, sources=tuple(meta.get("sources", ())),
                                bytes=size, created=meta.get("created")))
    return sorted(found, key=lambda e: e.created or 0.0)


def clear(chosen: Iterable[CacheEntry] | None = None, *, scratch_older_than_s: float = 3600.0
          ) -> list[CacheEntry]:
    """Remove ``chosen`` entries (None: every entry), and scratch folders of writers that
    stopped more than ``scratch_older_than_s`` ago (a younger one may still be writing).
    A process that has an entry memory-mapped keeps reading it (the files go when it ends).
    Returns the entries removed."""
    removed = list(entries() if chosen is None else chosen)
    for entry in removed:
        shutil.rmtree(entry.folder, ignore_errors=True)
    root = cache_root()
    if root.is_dir():
        for folder in root.glob(f"{_SCRATCH}*"):
            try:  # a writer appends to its files, so their times say when it last wrote
                age = time.time() - max(f.stat().st_mtime for f in (folder, *folder.iterdir()))
            except OSError:
                continue
            if age > scratch_older_than_s:
                shutil.rmtree(folder, ignore_errors=True)
    return removed

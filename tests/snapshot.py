"""What a test compares to show that nothing was written: a file's or a folder's bytes."""

from __future__ import annotations

import hashlib
from pathlib import Path


def digest(path: Path) -> str:
    """A file's bytes, or every file's under a folder, as one hash."""
    hasher = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        hasher.update(str(file).encode() + file.read_bytes())
    return hasher.hexdigest()

"""The one way hptransfer writes a file: to a temporary name in the same folder, then a rename.

A crash or a kill mid-write leaves the old file or none, never half a file. A write that
fails (a full disk) removes what it began: its temporary file, the folders it created, and,
for files written together (:func:`write_together`: a report's pages and images), the
files it had already written; it raises :class:`~hptransfer.errors.OutputError` naming the
file and the cause, not a traceback.
"""

from __future__ import annotations

import errno
import io
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hptransfer.errors import OutputError

__all__ = ["figure_png", "write_atomic", "write_figure", "write_together"]


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` atomically; create its folder; return it."""
    return write_together({path: data})[0]


def write_together(files: Mapping[str | os.PathLike[str], str | bytes]) -> list[Path]:
    """Write each file of ``files`` (path → data) atomically, in order, creating folders;
    all of them or none that did not exist before (module docstring)."""
    created: list[Path] = []  # new files and folders, to remove if a later write fails
    try:
        for target, data in files.items():
            path = Path(target)
            missing = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
            path.parent.mkdir(parents=True, exist_ok=True)
            created += reversed(missing)
            existed = path.exists()
            _replace(path, data.encode() if isinstance(data, str) else data)
            if not existed:
                created.append(path)
    except OSError as error:
        for made in reversed(created):
            try:
                made.unlink() if made.is_file() else made.rmdir()
            except OSError:
                pass  # (a folder something else wrote in meanwhile stays)
        where = error.filename or next(iter(files))
        cause = ("the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT)
                 else error.strerror or str(error))
        raise OutputError(f"cannot write {where}: {cause}; nothing of this output was left "
                          f"behind: free space, or give --out a folder on another disk") from None
    return [Path(target) for target in files]


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        if error.filename is None:  # a write, not an open: name the file it was for
            error.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def figure_png(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def write_figure(path: str | os.PathLike[str], fig: Any, dpi: int = 110) -> Path:
    """Write a matplotlib figure as a PNG file, atomically; the figure is closed."""
    return write_atomic(path, figure_png(fig, dpi))

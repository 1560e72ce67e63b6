"""The ``hptransfer`` command line (``hptransfer --help``)."""

from hptransfer.cli import confirmation, predict, reproduction, runs, studies  # noqa: F401  (register their commands)
from hptransfer.cli.app import main

__all__ = ["main"]

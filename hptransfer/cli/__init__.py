"""The ``hptransfer`` command line (``hptransfer --help``)."""

from hptransfer.cli import runs  # noqa: F401  (registers the run commands)
from hptransfer.cli.app import main

__all__ = ["main"]

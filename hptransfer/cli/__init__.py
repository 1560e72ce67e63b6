"""The ``hptransfer`` command line (``hptransfer --help``)."""

from hptransfer.cli import (  # noqa: F401  (register their commands)
    cache,
    confirmation,
    predict,
    reproduction,
    runs,
    studies,
)
from hptransfer.cli.app import main

__all__ = ["main"]

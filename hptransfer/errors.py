"""Every error hptransfer raises for a user to act on, in one leaf module.

Each is a :class:`ValueError` (bad input, not a bug) whose message says what is wrong and
how to fix it. The command line prints the message of any :class:`HPTransferError` and exits
with status 2, without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = ["AblationError", "ConfigError", "CorpusError", "HPTransferError", "OutputError",
           "PredictionError", "StorageError", "StudyError", "explain_fields"]


class HPTransferError(ValueError):
    """Base of the errors below: input that cannot be used, and what to do instead."""


class ConfigError(HPTransferError):
    """A config file or a combination of options that cannot be used."""


class CorpusError(HPTransferError):
    """A corpus that cannot be loaded, or is too small for the requested windows."""


class OutputError(HPTransferError):
    """An output file that could not be written (a full disk): nothing partial is left."""


class StorageError(HPTransferError):
    """A storage URL that cannot be opened or used as asked."""


class StudyError(HPTransferError):
    """A study that cannot be used as asked (missing, or made with another config)."""


class PredictionError(HPTransferError):
    """A study that cannot support a prediction."""


class AblationError(HPTransferError):
    """A reproduction study definition or setting that cannot be used."""


def explain_fields(error: Exception) -> str:
    """A pydantic ``ValidationError`` as one clause per problem, naming the field where there
    is one (``spec.width: ...``): the message to show instead of pydantic's own."""
    errors = getattr(error, "errors", None)
    if not callable(errors):
        return str(error)
    clauses = []
    for item in errors():
        where, message = ".".join(map(str, item["loc"])), item["msg"].removeprefix(
            "Value error, ")
        clauses.append(f"{where}: {message}" if where else message)
    return "; ".join(clauses)

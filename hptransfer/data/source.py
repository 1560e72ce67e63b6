"""Where a study's data is: :class:`DataSource`, what ``--data`` and its companion flags say.

A study stores its data source (not the corpus: it is loaded again, and its hash checked,
in every process that trains), so its workers, ``confirm`` runs, Ray trials and torchrun
ranks tokenize the same files the same way (:func:`hptransfer.data.corpus.load_corpus`
takes a source as it takes a path). A plain string is read as ``DataSource(path=…)``:
studies made before tokenizers and token widths were options keep working.

>>> DataSource.model_validate("corpus.txt")
DataSource(path='corpus.txt', tokenizer=None, token_dtype=None, column=None)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from hptransfer.data.tokens import TokenDType
from hptransfer.spec import FrozenConfig

__all__ = ["CorpusRecord", "DataSource"]


class CorpusRecord(FrozenConfig):
    """What a study records of its corpus beside its content hash: the tokenizer (name,
    vocabulary size, file hash) and the bytes per token that turn its losses into bits per
    byte. No path: the same data at another path is the same corpus."""

    source: str
    vocab_size: int
    tokenizer: str
    tokenizer_hash: str | None = None
    bytes_per_token: float | None = None
    bytes_per_token_note: str | None = None

    def bits_per_byte(self, loss: float | None) -> float | None:
        """``loss`` (nats per token) in bits per byte; None when either is unknown."""
        import math

        if loss is None or self.bytes_per_token is None or not math.isfinite(loss):
            return None
        return loss / (self.bytes_per_token * math.log(2))


class DataSource(FrozenConfig):
    """The corpus a command reads: a path, and how to read it (docs/data.md)."""

    path: str | None = Field(None, description="--data: a text file, token files, a Megatron "
                                               ".bin/.idx, a Parquet/Arrow table; None: "
                                               "the built-in corpus")
    tokenizer: str | None = Field(None, description="--tokenizer: a local tokenizer.json")
    token_dtype: TokenDType | None = Field(None, description="--token-dtype of flat token "
                                                             "files [default: meta.json's, "
                                                             "else uint16]")
    column: str | None = Field(None, description="--data-column of a Parquet/Arrow table")

    @model_validator(mode="before")
    @classmethod
    def _from_path(cls, value: Any) -> Any:
        return {"path": str(value)} if isinstance(value, (str, os.PathLike)) else value

    def resolved(self) -> DataSource:
        """The same source with absolute paths: workers started elsewhere find the files."""
        def absolute(path: str | None) -> str | None:
            return None if path is None else str(Path(path).expanduser().resolve())

        return self.model_copy(update={"path": absolute(self.path),
                                       "tokenizer": absolute(self.tokenizer)})

    def describe(self) -> str:
        """The flags that give this source, for messages."""
        parts = [f"--data {self.path}" if self.path else "the built-in corpus"]
        parts += [f"--tokenizer {self.tokenizer}"] if self.tokenizer else []
        parts += [f"--token-dtype {self.token_dtype.value}"] if self.token_dtype else []
        parts += [f"--data-column {self.column}"] if self.column else []
        return " ".join(parts)

"""Parquet and Arrow tables: a column of token ids, or a column of text and a tokenizer.

Accepted (``--data``): a ``.parquet`` file; a folder of ``.parquet`` files (read in name
order); an ``.arrow`` file (Arrow IPC, stream or file format); a folder written by
Hugging Face ``datasets``' ``Dataset.save_to_disk`` (its ``state.json`` lists the
``data-*.arrow`` files; for a ``DatasetDict`` give the split's folder, e.g. ``ds/train``).

Each row is a document. The column is ``--data-column``, else the first of ``input_ids``,
``ids``, ``tokens`` the table has, else ``text``. A list-of-integers column is ids; a string
column is text, tokenized with ``--tokenizer`` (required for it). Validation is the last
``validation_fraction`` of the rows (at least one), train the rows before: no document is in
both. Documents are concatenated without a separator (add one to your ids if you want one).

A table is compressed columns, not a flat array of ids, so it is streamed once, batch by
batch (never all in memory), into two flat token files (``train.bin``,
``val.bin``) of the token cache (:mod:`hptransfer.data.cache`: keyed by the files, the
column, the tokenizer file's hash and the split; written whole or not at all), then
memory-mapped like any token file. pyarrow is imported only here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hptransfer.data import cache
from hptransfer.data.tokens import TokenDType
from hptransfer.errors import CorpusError

__all__ = ["ID_COLUMNS", "TableTokens", "is_table", "read_table"]

ID_COLUMNS = ("input_ids", "ids", "tokens")
TEXT_COLUMN = "text"
_ROWS_PER_BATCH = 1024
_CACHE_VERSION = "1"


@dataclass(frozen=True)
class TableTokens:
    """A table's ids, as memory maps of its cache, and what was read."""

    train: np.ndarray
    validation: np.ndarray
    column: str
    vocab_size: int | None  # from the ids (largest + 1) when no tokenizer gave it
    validation_bytes: int | None  # UTF-8 bytes of the validation texts (text columns only)
    documents: int
    validation_documents: int


def is_table(path: Path) -> bool:
    """Whether ``path`` is a table this module reads (module docstring)."""
    if path.is_file():
        return path.suffix in (".parquet", ".arrow")
    return path.is_dir() and ((path / "state.json").is_file()
                              or any(path.glob("*.parquet")) or any(path.glob("*.arrow")))


def read_table(path: Path, *, column: str | None, tokenizer, validation_fraction: float
               ) -> TableTokens:
    """Stream the table at ``path`` into its cache (once) and memory-map it."""
    pa = _pyarrow()
    files = _files(path)
    schema = _open(files[0], pa).schema
    name = _column(path, schema, column, tokenizer, pa)
    text = pa.types.is_string(schema.field(name).type) or pa.types.is_large_string(
        schema.field(name).type)
    if text and tokenizer is None:
        raise CorpusError(f"column {name!r} of {str(path)!r} is text: give the --tokenizer "
                          f"(a tokenizer.json) to turn it into ids")
    folder = _cache_folder(files, name, tokenizer, validation_fraction)
    if not (folder / "meta.json").is_file():
        _stream(files, name, text, tokenizer, validation_fraction, folder, pa)
    meta = json.loads((folder / "meta.json").read_text())
    dtype = TokenDType(meta["dtype"])
    return TableTokens(
        train=np.memmap(folder / "train.bin", dtype=dtype.numpy, mode="r")
        if meta["train_tokens"] else np.zeros(0, dtype=dtype.numpy),
        validation=np.memmap(folder / "val.bin", dtype=dtype.numpy, mode="r")
        if meta["validation_tokens"] else np.zeros(0, dtype=dtype.numpy),
        column=name, vocab_size=meta["vocab_size"], validation_bytes=meta["validation_bytes"],
        documents=meta["documents"], validation_documents=meta["validation_documents"])


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet  # noqa: F401  (the submodule, on pa.parquet)
    except ModuleNotFoundError:
        raise CorpusError("Parquet and Arrow data need pyarrow: pip install "
                          "'hptransfer[parquet]'") from None
    return pa


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    state = path / "state.json"
    if state.is_file():
        try:
            listed = [path / f["filename"] for f in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError) as error:
            raise CorpusError(f"{state} is not a datasets state.json with _data_files "
                              f"({error}); give the .arrow or .parquet files' folder") from None
        missing = [p.name for p in listed if not p.is_file()]
        if missing or not listed:
            raise CorpusError(f"{state} lists {', '.join(missing) or 'no files'}, missing from "
                              f"{str(path)!r}: copy the whole folder save_to_disk wrote")
        return listed
    found = sorted(path.glob("*.parquet")) or sorted(path.glob("*.arrow"))
    if not found:
        raise CorpusError(f"{str(path)!r} has no .parquet or .arrow files; for a DatasetDict "
                          f"give the split's folder (e.g. {path / 'train'})")
    return found


class _Table:
    """One file's schema, row count and column batches, Parquet or Arrow alike."""

    def __init__(self, path: Path, pa) -> None:
        self.path, self._pa = path, pa
        try:
            if path.suffix == ".parquet":
                self._parquet = pa.parquet.ParquetFile(path)
                self.schema = self._parquet.schema_arrow
                self.rows = self._parquet.metadata.num_rows
            else:
                self._parquet = None
                self.schema = self._reader().schema
                self.rows = sum(b.num_rows for b in self._reader())
        except (OSError, pa.ArrowException) as error:
            raise CorpusError(f"{str(path)!r} does not read as "
                              f"{'Parquet' if path.suffix == '.parquet' else 'Arrow IPC'}: "
                              f"{error} (truncated or another format?)") from None

    def _reader(self):
        source = self._pa.memory_map(str(self.path))  # zero-copy: batches stay on disk
        try:
            return self._pa.ipc.open_stream(source)
        except self._pa.ArrowInvalid:
            return self._pa.ipc.open_file(source)

    def batches(self, column: str) -> Iterator:
        try:
            if self._parquet is not None:
                for batch in self._parquet.iter_batches(batch_size=_ROWS_PER_BATCH,
                                                        columns=[column]):
                    yield batch.column(0)
            else:
                reader = self._reader()
                batches = (reader.get_batch(i) for i in range(reader.num_record_batches)) \
                    if hasattr(reader, "num_record_batches") else reader
                for batch in batches:
                    yield batch.column(batch.schema.get_field_index(column))
        except (OSError, self._pa.ArrowException) as error:
            raise CorpusError(f"{str(self.path)!r} fails to read mid-way: {error} (is it "
                              f"truncated?)") from None


def _open(path: Path, pa) -> _Table:
    return _Table(path, pa)


def _column(path: Path, schema, column: str | None, tokenizer, pa) -> str:
    names = list(schema.names)
    if column is None:
        column = next((c for c in ID_COLUMNS if c in names),
                      TEXT_COLUMN if TEXT_COLUMN in names else None)
    if column is None or column not in names:
        wanted = f"no column {column!r}" if column else (
            f"none of the columns {', '.join((*ID_COLUMNS, TEXT_COLUMN))}")
        raise CorpusError(f"{str(path)!r} has {wanted}; its columns are {', '.join(names)}: "
                          f"name the one to read with --data-column")
    kind = schema.field(column).type
    is_ids = (pa.types.is_list(kind) or pa.types.is_large_list(kind)) and pa.types.is_integer(
        kind.value_type)
    if not is_ids and not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise CorpusError(f"column {column!r} of {str(path)!r} is {kind}: give a column of "
                          f"token-id lists or of text with --data-column")
    return column


def _cache_folder(files: list[Path], column: str, tokenizer, validation_fraction: float
                  ) -> Path:
    return cache.folder_for(f"parquet-{_CACHE_VERSION}", files, column,
                            getattr(tokenizer, "file_hash", None), validation_fraction)


def _documents(files: list[_Table], column: str, text: bool, tokenizer
               ) -> Iterator[tuple[list[np.ndarray], int]]:
    """Per batch of rows: each row's ids, and the UTF-8 bytes of the texts (0 for ids)."""
    for table in files:
        for array in table.batches(column):
            if text:
                texts = [t or "" for t in array.to_pylist()]
                yield tokenizer.encode_batch(texts), [len(t.encode("utf-8")) for t in texts]
            else:
                offsets = np.asarray(array.offsets)
                offsets = offsets - offsets[0]  # a sliced array's offsets start past 0
                values = np.asarray(array.flatten().fill_null(0))
                yield ([values[offsets[i]:offsets[i + 1]] for i in range(len(array))],
                       [0] * len(array))


def _stream(paths: list[Path], column: str, text: bool, tokenizer, validation_fraction: float,
            folder: Path, pa) -> None:
    tables = [_open(p, pa) for p in paths]
    for t in tables:
        if column not in t.schema.names:
            raise CorpusError(f"{str(t.path)!r} has no column {column!r} (its columns: "
                              f"{', '.join(t.schema.names)})")
    rows = sum(t.rows for t in tables)
    if rows < 2:
        raise CorpusError(f"{str(paths[0])!r} has {rows} row(s); the split is by row "
                          f"(document), so it needs at least two")
    n_val = min(max(1, round(rows * validation_fraction)), rows - 1)
    if text:
        dtype = TokenDType.for_vocab(tokenizer.vocab_size)
    else:  # one cheap pass for the largest id, so the cache is as narrow as the ids allow
        top = -1
        for table in tables:
            for array in table.batches(column):
                values = np.asarray(array.flatten().fill_null(0))
                if values.size:
                    if values.min() < 0:
                        raise CorpusError(f"column {column!r} of {str(table.path)!r} holds "
                                          f"negative id {int(values.min())}: not token ids")
                    top = max(top, int(values.max()))
        if top >= 1 << 32:
            raise CorpusError(f"column {column!r} holds id {top}, beyond uint32: not token ids")
        dtype = TokenDType.for_vocab(top + 1)

    def write(scratch: Path) -> dict:
        counts = {"train": 0, "val": 0}
        top, val_bytes, row = -1, 0, 0
        with open(scratch / "train.bin", "wb") as train, open(scratch / "val.bin", "wb") as val:
            for docs, sizes in _documents(tables, column, text, tokenizer):
                for ids, size in zip(docs, sizes, strict=True):
                    split = "val" if row >= rows - n_val else "train"
                    if ids.size:
                        top = max(top, int(ids.max()))
                        ids.astype(dtype.numpy).tofile(val if split == "val" else train)
                    counts[split] += ids.size
                    val_bytes += size if split == "val" else 0
                    row += 1
        return {"dtype": dtype.value, "train_tokens": counts["train"],
                "validation_tokens": counts["val"],
                "vocab_size": None if text else top + 1,
                "validation_bytes": val_bytes if text else None,
                "documents": rows, "validation_documents": n_val, "column": column}

    cache.write_entry(folder, paths, write)

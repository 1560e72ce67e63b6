"""Megatron-LM's indexed datasets (``PREFIX.bin`` + ``PREFIX.idx``), read in place with numpy.

The ``.bin`` is every sequence's ids back to back; the ``.idx`` says where each one is. Its
layout (Megatron-LM ``megatron/core/datasets/indexed_dataset.py``, format version 1), all
little-endian::

    magic            9 bytes   b"MMIDIDX\\x00\\x00"
    version          uint64    1
    dtype code       uint8     1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
                               7 float32, 8 uint16
    sequence count   uint64    S
    document count   uint64    D (document boundaries, the first 0, the last S)
    sequence lengths int32[S]  ids per sequence
    pointers         int64[S]  byte offset of each sequence in the .bin
    document index   int64[D]  the sequence each document starts at, then S

Nothing is loaded: the ``.bin`` is one memory map (``int32`` read as ``uint32``, ``int16``
as ``uint16``: the same bytes for the non-negative ids a tokenizer makes), and the split is
two views of it. Validation is the last ``validation_fraction`` of the *documents* (at least
one), cut at a document boundary, so no document is in both splits; train is everything
before. The ``.idx`` must describe the ``.bin`` exactly: sequences back to back from offset
0 to the file's end, or it is refused.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hptransfer.data.tokens import TokenDType
from hptransfer.errors import CorpusError

__all__ = ["MAGIC", "MegatronData", "pair", "read_megatron"]

MAGIC = b"MMIDIDX\x00\x00"
# magic, version, dtype code, sequence count, document count; "<": no padding (34 bytes)
_HEADER = struct.Struct("<9sQBQQ")
# codes of integer ids hptransfer can view as uint16 / uint32 without a copy
_READABLE = {8: TokenDType.UINT16, 3: TokenDType.UINT16, 4: TokenDType.UINT32}
_NAMES = {1: "uint8", 2: "int8", 3: "int16", 4: "int32", 5: "int64", 6: "float64",
          7: "float32", 8: "uint16"}


@dataclass(frozen=True)
class MegatronData:
    """A Megatron dataset's two splits (memory-map views) and what the split was."""

    train: np.ndarray
    validation: np.ndarray
    dtype: TokenDType
    documents: int
    validation_documents: int


def pair(path: Path) -> tuple[Path, Path]:
    """The ``.bin`` and ``.idx`` of the dataset ``path`` names (either file, or the prefix)."""
    prefix = path.with_suffix("") if path.suffix in (".bin", ".idx") else path
    return prefix.with_name(prefix.name + ".bin"), prefix.with_name(prefix.name + ".idx")


def read_megatron(path: Path, validation_fraction: float) -> MegatronData:
    """Read the dataset at ``path`` (module docstring); :class:`CorpusError` on any mismatch."""
    bin_path, idx_path = pair(path)
    for p in (bin_path, idx_path):
        if not p.is_file():
            raise CorpusError(f"Megatron dataset {str(path)!r}: {p.name} is missing (a Megatron "
                              f"dataset is PREFIX.bin with its PREFIX.idx)")
    idx_size = idx_path.stat().st_size
    if idx_size < _HEADER.size:
        raise CorpusError(f"{idx_path} has {idx_size} bytes, less than a Megatron index "
                          f"header: it is truncated")
    with idx_path.open("rb") as handle:
        magic, version, code, n_seq, n_doc = _HEADER.unpack(handle.read(_HEADER.size))
    if magic != MAGIC:
        raise CorpusError(f"{idx_path} does not start with Megatron's index magic "
                          f"{MAGIC!r}: it is not an MMIDIDX index")
    if version != 1:
        raise CorpusError(f"{idx_path} is index version {version}; hptransfer reads "
                          f"version 1")
    if code not in _READABLE:
        raise CorpusError(f"{idx_path}: ids are {_NAMES.get(code, f'dtype code {code}')}; "
                          f"hptransfer reads uint16, int16 and int32 token ids")
    dtype = _READABLE[code]
    expected = _HEADER.size + 4 * n_seq + 8 * n_seq + 8 * n_doc
    if idx_size < expected:
        raise CorpusError(f"{idx_path} has {idx_size} bytes but its header promises {n_seq} "
                          f"sequences and {n_doc} document boundaries ({expected} bytes): "
                          f"it is truncated")
    offset = _HEADER.size
    sizes = np.memmap(idx_path, dtype="<i4", mode="r", offset=offset, shape=(n_seq,))
    pointers = np.memmap(idx_path, dtype="<i8", mode="r", offset=offset + 4 * n_seq,
                         shape=(n_seq,))
    docs = np.memmap(idx_path, dtype="<i8", mode="r", offset=offset + 12 * n_seq,
                     shape=(n_doc,))
    width = dtype.numpy.itemsize
    bin_size = bin_path.stat().st_size
    # back to back from offset 0 to the .bin's end: one cumulative sum says it all
    ends = np.cumsum(sizes, dtype=np.int64) * width
    if (n_seq == 0 or (sizes < 0).any() or pointers[0] != 0
            or (pointers[1:] != ends[:-1]).any() or ends[-1] != bin_size):
        raise CorpusError(
            f"{idx_path} does not match {bin_path.name}: the index describes "
            f"{int(ends[-1]) if n_seq else 0} bytes of {_NAMES[code]} sequences back to back, "
            f"the .bin has {bin_size} bytes; rebuild the pair, or give the .idx written with "
            f"this .bin")
    if (n_doc < 2 or docs[0] != 0 or docs[-1] != n_seq or (np.diff(docs) <= 0).any()):
        raise CorpusError(f"{idx_path}: its document index is not increasing from 0 to the "
                          f"{n_seq} sequences; the index is damaged")
    ids = np.memmap(bin_path, dtype=dtype.numpy, mode="r")
    documents = n_doc - 1
    if documents < 2:
        raise CorpusError(f"Megatron dataset {str(path)!r} has one document; the split is by "
                          f"document, so it needs at least two")
    n_val = min(max(1, round(documents * validation_fraction)), documents - 1)
    cut = int(pointers[docs[documents - n_val]]) // width
    return MegatronData(train=ids[:cut], validation=ids[cut:], dtype=dtype,
                        documents=documents, validation_documents=n_val)

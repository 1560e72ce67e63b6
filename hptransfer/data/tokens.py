"""Token ids on disk: their width, the sidecar that names it, the memory map, the hash.

Every pre-tokenized format (nanoGPT and OLMo-style flat files, Megatron ``.bin``/``.idx``,
the cache a Parquet table is streamed into) ends as one or two 1-D memory maps of
little-endian ids, ``uint16`` or ``uint32`` (:class:`TokenDType`). The width is never
guessed: it is ``--token-dtype``, or the ``dtype`` of a ``meta.json`` sidecar beside the
files, or the format's own header (Megatron); a flat file with none of them is read as
nanoGPT's ``uint16``, and refused when it looks like ``uint32`` ids (every second half-word
zero) instead of silently training on garbage.

``meta.json`` (optional, beside the token files)::

    {"dtype": "uint32", "vocab_size": 128256}

:func:`scan` hashes the ids for the corpus's ``content_hash``. Up to
:data:`FULL_SCAN_BYTES` it reads every id (and finds the largest, which checks the
vocabulary); above it reads :data:`SAMPLED_BLOCKS` evenly spaced blocks per split, so a
10 GB file is identified by ~64 MB of reads, and its ids are checked against the
vocabulary batch by batch as they are drawn (:class:`~hptransfer.data.corpus.Corpus`).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hptransfer.errors import CorpusError

__all__ = ["FULL_SCAN_BYTES", "SAMPLED_BLOCKS", "Scan", "TokenDType", "TokenMeta", "release",
           "check_width", "memmap_ids", "read_sidecar", "scan"]

# Corpora up to this size are hashed (and their largest id found) in one full pass; a
# bigger one would cost a full read of the data on every load in every worker process.
FULL_SCAN_BYTES = 1 << 28
# A sampled hash reads this many blocks of _BLOCK_IDS ids per split, first and last included.
SAMPLED_BLOCKS = 1024
_BLOCK_IDS = 1 << 14
# Ids per chunk of a full pass, so a big memmap is never resident at once.
_CHUNK_IDS = 1 << 24
# Ids looked at to tell uint32 ids read as uint16.
_WIDTH_SAMPLE = 1 << 16
SIDECAR = "meta.json"


class TokenDType(str, enum.Enum):
    """How wide each stored token id is (always little-endian)."""

    UINT16 = "uint16"
    """nanoGPT's ``.bin``: vocabularies up to 65,536 (GPT-2's 50,257)."""
    UINT32 = "uint32"
    """Anything bigger: Llama 3's 128,256, Qwen's 151,646 (OLMo memmaps, Megatron int32)."""

    @property
    def numpy(self) -> np.dtype:
        return np.dtype("<u2" if self is TokenDType.UINT16 else "<u4")

    @classmethod
    def for_vocab(cls, vocab_size: int) -> TokenDType:
        """The narrower width that holds every id below ``vocab_size``."""
        return cls.UINT16 if vocab_size <= 1 << 16 else cls.UINT32


@dataclass(frozen=True)
class TokenMeta:
    """What a ``meta.json`` sidecar says (either may be missing)."""

    dtype: TokenDType | None = None
    vocab_size: int | None = None
    path: Path | None = None


@dataclass(frozen=True)
class Scan:
    """A corpus's ``content_hash``, and its largest id when every id was read (else None)."""

    content_hash: str
    max_id: int | None


def read_sidecar(folder: Path) -> TokenMeta:
    """The ``meta.json`` in ``folder``, or an empty :class:`TokenMeta` when there is none."""
    path = folder / SIDECAR
    if not path.is_file():
        return TokenMeta()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CorpusError(f"{path} is not JSON ({error}); write it as "
                          f'{{"dtype": "uint32", "vocab_size": N}} or delete it') from None
    if not isinstance(data, dict):
        raise CorpusError(f"{path} holds a {type(data).__name__}, not an object like "
                          f'{{"dtype": "uint32", "vocab_size": N}}')
    dtype, vocab = data.get("dtype"), data.get("vocab_size")
    if dtype is not None and dtype not in {d.value for d in TokenDType}:
        raise CorpusError(f"{path}: dtype {dtype!r} is not uint16 or uint32")
    if vocab is not None and (not isinstance(vocab, int) or not 0 < vocab <= 1 << 32):
        raise CorpusError(f"{path}: vocab_size {vocab!r} is not a positive integer ≤ 2^32")
    return TokenMeta(dtype=TokenDType(dtype) if dtype else None, vocab_size=vocab, path=path)


def memmap_ids(path: Path, dtype: TokenDType, *, given_by: str) -> np.ndarray:
    """``path`` as a read-only memory map of ``dtype`` ids; refused when empty or when its
    size is not a whole number of ids (``given_by`` says where the dtype came from)."""
    size = path.stat().st_size
    if size == 0:
        raise CorpusError(f"token file {str(path)!r} is empty")
    width = dtype.numpy.itemsize
    if size % width:
        raise CorpusError(
            f"token file {str(path)!r} has {size} bytes, not a whole number of {dtype.value} "
            f"ids ({width} bytes each; the dtype is {given_by}): is it truncated, or are its "
            f"ids another width? give --token-dtype uint16|uint32")
    return np.memmap(path, dtype=dtype.numpy, mode="r")


def release(*arrays: np.ndarray) -> None:
    """Unmap the file pages this process has touched in memory-mapped ``arrays`` (they stay
    in the kernel's page cache; the next read maps them again). A no-op for other arrays.

    Why: the kernel maps a file's pages in large folios (up to megabytes around each read),
    and every mapped page counts in the process's RSS. Hashing 1,024 blocks of a 2 GB token
    file left 1.4 GB mapped (RssFile; RssAnon stayed 23 MB), and random training windows map
    about 20 KB each, so a long tune's RSS would creep towards the file's size. Dropping the
    mappings keeps RSS to what the process holds itself."""
    import mmap

    for ids in arrays:
        mapping = getattr(ids, "_mmap", None)  # np.memmap and its slices share their mmap
        if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
            try:
                mapping.madvise(mmap.MADV_DONTNEED)
            except (OSError, ValueError):  # a closed map, or a kernel that refuses: harmless
                pass


def check_width(path: Path, ids: np.ndarray) -> None:
    """Refuse ``uint16`` ids that look like ``uint32`` ones: little-endian uint32 ids below
    65,536 read as uint16 put a zero in every odd position, which real text never does."""
    sample = np.asarray(ids[:_WIDTH_SAMPLE])
    if len(sample) >= 64 and not sample[1::2].any() and sample[0::2].any():
        raise CorpusError(
            f"token file {str(path)!r} was read as uint16 (nanoGPT's default) but every "
            f"second id is 0: it looks like uint32 ids; give --token-dtype uint32, or write "
            f'{{"dtype": "uint32"}} to {SIDECAR} beside it')


def scan(train: np.ndarray, validation: np.ndarray) -> Scan:
    """Hash ``train`` and ``validation`` (and find their largest id when reading them all).

    Full (total ≤ :data:`FULL_SCAN_BYTES`): sha256 of ``b"hptransfer-corpus-v1\\n"`` (with
    ``-uint32`` before the newline for 4-byte ids), then per split its length as 8
    little-endian bytes and its ids. Sampled (bigger): sha256 of
    ``b"hptransfer-corpus-sampled-v1-<dtype>\\n"``, then per split its length and
    :data:`SAMPLED_BLOCKS` blocks of 16,384 ids at evenly spaced offsets. Either depends on the
    ids and the split only, never on paths or times.
    """
    itemsize = train.dtype.itemsize
    if (len(train) + len(validation)) * itemsize <= FULL_SCAN_BYTES:
        return _full(train, validation, itemsize)
    return _sampled(train, validation, itemsize)


def _full(train: np.ndarray, validation: np.ndarray, itemsize: int) -> Scan:
    # uint16 keeps the v1 domain unchanged, so studies made before uint32 ids still match
    suffix = b"" if itemsize == 2 else b"-uint32"
    hasher = hashlib.sha256(b"hptransfer-corpus-v1" + suffix + b"\n")
    wire = "<u2" if itemsize == 2 else "<u4"
    max_id = -1
    for ids in (train, validation):
        hasher.update(len(ids).to_bytes(8, "little"))
        for start in range(0, len(ids), _CHUNK_IDS):
            chunk = np.ascontiguousarray(ids[start:start + _CHUNK_IDS], dtype=wire)
            hasher.update(memoryview(chunk).cast("B"))
            max_id = max(max_id, int(chunk.max()))
    return Scan("sha256:" + hasher.hexdigest(), max_id)


def _sampled(train: np.ndarray, validation: np.ndarray, itemsize: int) -> Scan:
    wire = "<u2" if itemsize == 2 else "<u4"
    hasher = hashlib.sha256(f"hptransfer-corpus-sampled-v1-{wire}\n".encode())
    for ids in (train, validation):
        n = len(ids)
        hasher.update(n.to_bytes(8, "little"))
        last = max(n - _BLOCK_IDS, 0)
        starts = np.unique(np.linspace(0, last, SAMPLED_BLOCKS).astype(np.int64))
        for i, start in enumerate(starts):
            block = np.ascontiguousarray(ids[start:start + _BLOCK_IDS], dtype=wire)
            hasher.update(memoryview(block).cast("B"))
            if i % 64 == 63:  # each block maps up to ~1.4 MB around it: keep the peak low
                release(ids)
    release(train, validation)
    return Scan("sha256:" + hasher.hexdigest(), None)

"""Text files: cut into chunks of lines and tokenized chunk by chunk, never read whole.

A text file is cut at a newline with text on both sides (``word\\nword``), the first such
newline past every :data:`CHUNK_BYTES` (1 MiB). Every common pre-tokenizer (GPT-2's and Llama 3's
byte-level regexes, whitespace splitters) already splits there, so the chunks' ids joined
are the ids of the whole file: measured for the byte-level BPE tokenizers of 8,192 and
32,768 tokens that ``benchmarks/bpe_corpus.py`` trains, on the built-in corpus as text
(identical, 3.49 M and 3.23 M ids). A tokenizer that adds something at the start of every
input (a prefix space, SentencePiece's ``▁``) adds it once per chunk, i.e. once per ~1 MB. A
file without such a newline is one chunk. Each chunk is decoded as UTF-8 (undecodable bytes
kept through ``surrogateescape``) and encoded on its own; a tokenizer.json encodes a group
of chunks in parallel.

Byte-level text up to :data:`IN_MEMORY_BYTES` is read into memory (its ids are its bytes).
Anything else is streamed once into the token cache (:mod:`hptransfer.data.cache`) and
memory-mapped: a tokenizer.json is paid once, not in every worker process, and a 10 GB file
is never in RAM. A tokenizer object given from Python (no file to key a cache by) is
encoded chunk by chunk into memory. Validation is the last ``validation_fraction`` of the
ids, split when loaded (one cache entry serves every fraction).
"""

from __future__ import annotations

import mmap
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hptransfer.data import cache
from hptransfer.data.tokenizer import ByteTokenizer, Tokenizer
from hptransfer.data.tokens import TokenDType
from hptransfer.errors import CorpusError

__all__ = ["CHUNK_BYTES", "IN_MEMORY_BYTES", "CorpusWarning", "chunks", "read_text_ids"]

CHUNK_BYTES = 1 << 20
IN_MEMORY_BYTES = 1 << 26
# Chunks handed to a tokenizer.json's parallel encode_batch at once (~4 MB of text). The
# library's Encoding objects cost ~200 bytes per token until converted: groups of 64 MB
# peaked at 3.8 GB RSS on 120 MB of text (BPE 8k), so the group stays small.
_GROUP = 4
# NUL bytes do not occur in text; a file with them is a program, an archive or token ids
_BINARY_SAMPLE = 1 << 20
_CUT = re.compile(rb"(?<=[^\s])\n(?=[^\s])")
_VERSION = "text-1"


class CorpusWarning(UserWarning):
    """Data that loads, but probably not as meant (shown as a ``warning:`` line)."""


def chunks(data, size: int | None = None) -> Iterator[tuple[int, int]]:
    """``(start, end)`` byte offsets of the chunks of ``data`` (bytes or an mmap): cut
    after the first ``word\\nword`` newline past every ``size`` bytes (module docstring)."""
    size = CHUNK_BYTES if size is None else size
    total = len(data)
    start = 0
    while start < total:
        found = _CUT.search(data, start + size) if start + size < total else None
        end = found.end() if found is not None else total
        yield start, end
        start = end


def read_text_ids(path: Path, tokenizer: Tokenizer) -> np.ndarray:
    """The ids of the text file ``path`` (read-only: in memory, or a memory map of the
    token cache). Raises :class:`CorpusError` for an empty or binary file, or a tokenizer
    that returns something other than 1-D ``uint16``/``uint32`` ids; warns
    (:class:`CorpusWarning`) about a file that is not valid UTF-8."""
    size = path.stat().st_size
    if size == 0:
        raise CorpusError(f"corpus file {str(path)!r} is empty")
    byte_level = isinstance(tokenizer, ByteTokenizer)
    file_hash = getattr(tokenizer, "file_hash", None)
    if byte_level and size <= IN_MEMORY_BYTES or not byte_level and file_hash is None:
        with path.open("rb") as handle, _mapped(handle, size) as data:
            _check_binary(path, data)
            ids = np.concatenate(list(_encode(path, data, tokenizer, None)))
        ids.setflags(write=False)
        return ids
    folder = cache.folder_for(_VERSION, [path], "bytes" if byte_level else file_hash)
    meta = cache.read_meta(folder)
    if meta is None:
        meta = cache.write_entry(folder, [path], lambda scratch: _stream(path, size, tokenizer,
                                                                         scratch))
    if meta.get("invalid_utf8_at") is not None:  # on every load, as for a file in memory
        _warn_utf8(path, meta["invalid_utf8_at"])
    if not meta["tokens"]:
        raise CorpusError(f"tokenizer {tokenizer.name!r} made no ids of {str(path)!r}")
    return np.memmap(folder / "ids.bin", dtype=TokenDType(meta["dtype"]).numpy, mode="r")


def _stream(path: Path, size: int, tokenizer: Tokenizer, scratch: Path) -> dict:
    dtype = TokenDType.for_vocab(tokenizer.vocab_size)
    bad: list[int] = []
    tokens = 0
    with path.open("rb") as handle, _mapped(handle, size) as data, \
            open(scratch / "ids.bin", "wb") as out:
        _check_binary(path, data)
        for ids in _encode(path, data, tokenizer, bad):
            ids.astype(dtype.numpy, copy=False).tofile(out)
            tokens += ids.size
    return {"dtype": dtype.value, "tokens": tokens, "tokenizer": tokenizer.name,
            "invalid_utf8_at": bad[0] if bad else None}


def _encode(path: Path, data, tokenizer: Tokenizer, bad: list[int] | None
            ) -> Iterator[np.ndarray]:
    """Each chunk's ids, in order (a group of chunks at a time); the offset of the first
    byte that is not UTF-8 is appended to ``bad`` (None: warned here)."""
    byte_level = isinstance(tokenizer, ByteTokenizer)
    bounds = list(chunks(data))
    found_bad = False
    for at in range(0, len(bounds), _GROUP):
        group = bounds[at:at + _GROUP]
        raw = [bytes(data[start:end]) for start, end in group]
        _release(data)  # the file's pages read so far leave RSS (they stay in the page cache)
        if not found_bad:
            for (start, _), piece in zip(group, raw, strict=True):
                try:
                    piece.decode("utf-8")
                except UnicodeDecodeError as error:
                    found_bad = True
                    if bad is None:
                        _warn_utf8(path, start + error.start)
                    else:
                        bad.append(start + error.start)
                    break
        if byte_level:  # its ids are the bytes: no decode and encode
            yield from (np.frombuffer(piece, dtype=np.uint8).astype(np.uint16)
                        for piece in raw)
            continue
        texts = [piece.decode("utf-8", errors="surrogateescape") for piece in raw]
        batch = getattr(tokenizer, "encode_batch", None)
        encoded = batch(texts) if batch is not None else [tokenizer.encode(t) for t in texts]
        for ids in encoded:
            ids = np.asarray(ids)
            if ids.ndim != 1 or ids.dtype not in (np.uint16, np.uint32):
                raise CorpusError(
                    f"tokenizer {tokenizer.name!r} returned shape {ids.shape} dtype "
                    f"{ids.dtype}; Tokenizer.encode must return a 1-D uint16 or uint32 array")
            yield ids


class _mapped:
    """The open file ``handle`` as a read-only mmap (an empty file cannot be mapped)."""

    def __init__(self, handle, size: int) -> None:
        self.map = mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ)

    def __enter__(self):
        return self.map

    def __exit__(self, *exc) -> None:
        self.map.close()


def _release(data) -> None:
    """Unmap the pages of the mmap ``data`` this process touched (a read maps them, and
    every mapped page counts in RSS: a 10 GB file would end fully mapped); see
    :func:`hptransfer.data.tokens.release`."""
    if isinstance(data, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            data.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # a kernel that refuses: harmless
            pass


def _check_binary(path: Path, data) -> None:
    """Refuse binary data given as text."""
    if data.find(b"\x00", 0, _BINARY_SAMPLE) >= 0:
        raise CorpusError(
            f"corpus file {str(path)!r} is binary (it holds NUL bytes), not text: give a text "
            f"file, a .bin file of uint16 token ids, or a folder with train.bin and val.bin")


def _warn_utf8(path: Path, offset: int) -> None:
    # a byte model trains on the bytes as they are, which is only right if that was meant
    warnings.warn(f"corpus file {str(path)!r} is not valid UTF-8 (first bad byte at "
                  f"{offset}); its bytes are trained on as they are", CorpusWarning,
                  stacklevel=4)

"""The corpus proxy models train on: token ids split into train and validation.

`load_corpus` accepts these sources (`CorpusSource`; docs/data.md has the details):

- ``None``: the built-in corpus, the running interpreter's own standard library
  sources, byte-tokenized. Every Python install has it, so tests and examples need no
  download; and it is real, varied text (code, docstrings, comments): ~12 MB on 3.11.
- a text file, tokenized with `ByteTokenizer`, or a ``tokenizer.json`` (`JsonTokenizer`).
- flat token files (`hptransfer.data.tokens`): a directory with ``train.bin`` and
  ``val.bin``, or one file, of ``uint16`` (nanoGPT) or ``uint32`` (OLMo-style) ids.
- a Megatron-LM ``PREFIX.bin`` / ``PREFIX.idx`` pair (`hptransfer.data.megatron`).
- Parquet or Arrow tables, or a folder saved by ``datasets`` (`hptransfer.data.parquet`),
  with a token-id column or a text column and a tokenizer.

Ids are ``uint16`` when they fit and ``uint32`` when a vocabulary exceeds 65,536; token
files stay memory maps, so a 10 GB file is never read into memory. The returned `Corpus`
is an immutable record with a ``content_hash`` of its token ids (and of the tokenizer file
that made them), so run records can say exactly what data a run saw, and the bytes per
token of its validation split, which turns a loss into bits per byte. This module uses
numpy only: batches are int64 arrays that the training loop moves to torch itself.

>>> corpus = load_corpus()
>>> corpus.vocab_size, corpus.tokenizer, corpus.bytes_per_token
(256, 'bytes', 1.0)
>>> corpus.train_batch(np.random.default_rng(0), batch_size=4, seq_len=16).shape
(4, 17)
"""

from __future__ import annotations

import enum
import functools
import hashlib
import math
import os
import pickle
import platform
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hptransfer.data import tokens as token_files
from hptransfer.data.text import CorpusWarning, read_text_ids
from hptransfer.data.tokenizer import ByteTokenizer, JsonTokenizer, Tokenizer
from hptransfer.data.tokens import TokenDType
from hptransfer.errors import CorpusError

if TYPE_CHECKING:
    from hptransfer.data.source import CorpusRecord, DataSource

__all__ = [
    "Corpus",
    "CorpusError",
    "CorpusSource",
    "CorpusWarning",
    "TokenDType",
    "builtin_corpus_files",
    "check_hash",
    "is_builtin_validation_file",
    "load_corpus",
]

# Directory names under the stdlib that hold test suites or third-party packages rather
# than the library itself. 3.11 has test/, idlelib/idle_test/, ctypes/test/,
# distutils/tests/, lib2to3/tests/, tkinter/test/ and unittest/test/ (3.12 moved most
# into test/); config-* is the build's Makefile and python-config.py.
_EXCLUDED_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)

# The built-in corpus sends a file to validation when a hash of its relative path is 0
# mod _VALIDATION_MODULUS: ~5% of files, fixed per file, so adding or removing a module
# in another Python version never moves other files between splits.
_VALIDATION_MODULUS = 20

# Token files without their text get their bytes per token by decoding this many
# validation ids (evenly spaced runs of _DECODE_RUN), enough for 0.1% precision.
# After this many training windows, the file pages they touched are unmapped
# (tokens.release): about 80 MB of mapped pages at most, at ~20 KB per window.
_RELEASE_WINDOWS = 4096
_DECODE_IDS = 1 << 18
_DECODE_RUN = 1 << 12

_ACCEPTED = (
    "expected a text file, a .bin token file, a directory with train.bin and val.bin, a "
    "Megatron PREFIX.bin with its .idx, or a Parquet/Arrow table"
)


class CorpusSource(str, enum.Enum):
    """Where a corpus's token ids came from."""

    BUILTIN = "builtin"
    """The running interpreter's standard library sources, byte-tokenized."""
    TEXT = "text"
    """A text file, tokenized on load."""
    TOKENS = "tokens"
    """Flat token files (nanoGPT ``.bin``, OLMo-style ``uint32``), memory-mapped."""
    MEGATRON = "megatron"
    """A Megatron-LM ``.bin``/``.idx`` indexed dataset, memory-mapped, split by document."""
    TABLE = "table"
    """A Parquet/Arrow table (or a ``datasets`` folder), streamed into a token cache."""


# eq=False: a field-wise == would compare arrays, whose truth value is ambiguous;
# compare corpora by content_hash instead.
@dataclass(frozen=True, eq=False)
class Corpus:
    """Token ids split into train and validation, with what is needed to record them.

    ``train`` and ``validation`` are 1-D ``uint16`` or ``uint32`` arrays (``np.memmap`` for
    token files, read-only arrays otherwise). ``content_hash`` is ``"sha256:" + hex`` of the
    ids and the split (`hptransfer.data.tokens.scan`: for uint16 ids up to 256 MB, sha256 of
    ``b"hptransfer-corpus-v1\\n"``, the train length as 8 little-endian bytes, the train
    ids, the validation length likewise, and the validation ids; bigger corpora hash evenly
    spaced blocks); with a ``tokenizer.json``, sha256 of ``b"hptransfer-corpus+tokenizer-
    v1\\n"``, that hash and the file's hash (``tokenizer_hash``). It depends on the data
    only, never on paths or mtimes, so the same data hashes the same anywhere.

    ``bytes_per_token`` is the UTF-8 bytes per token of the validation split (1.0 for byte
    corpora), None when unknown (ids without their tokenizer), ``bytes_per_token_note``
    then says why; `bits_per_byte` turns a loss in nats per token into bits per byte.
    """

    name: str
    source: CorpusSource
    content_hash: str
    vocab_size: int
    tokenizer: str
    train: np.ndarray
    validation: np.ndarray
    tokenizer_hash: str | None = None
    bytes_per_token: float | None = None
    bytes_per_token_note: str | None = None
    # windows drawn since the file pages they touched were last unmapped (train_batch)
    _drawn: list[int] = field(default_factory=lambda: [0], repr=False)

    def __post_init__(self) -> None:
        for split, ids in (("train", self.train), ("validation", self.validation)):
            # Compare kind and size, not dtype: a memmap's "<u2" is not the native
            # uint16 on a big-endian host, yet holds the same ids.
            if ids.ndim != 1 or ids.dtype.kind != "u" or ids.dtype.itemsize not in (2, 4):
                raise CorpusError(
                    f"{split} split must be a 1-D uint16 or uint32 array, "
                    f"got shape {ids.shape} dtype {ids.dtype}"
                )
        if not 0 < self.vocab_size <= 1 << 32:
            raise CorpusError(
                f"vocab_size must lie in [1, 2^32], got {self.vocab_size}"
            )

    def bits_per_byte(self, loss: float | None) -> float | None:
        """``loss`` (mean nats per token) in bits per byte of text: loss / (bytes per token ×
        ln 2), comparable across tokenizers; None when either is unknown."""
        if loss is None or self.bytes_per_token is None or not math.isfinite(loss):
            return None
        return loss / (self.bytes_per_token * math.log(2))

    def train_batch(
        self, rng: np.random.Generator, batch_size: int, seq_len: int
    ) -> np.ndarray:
        """Random contiguous windows of train, shape ``(batch_size, seq_len + 1)``.

        Start offsets are uniform over every valid position and drawn from ``rng`` only,
        so a seeded generator gives the same batches. Row ``b`` holds inputs
        ``[b, :-1]`` and next-token targets ``[b, 1:]``. Returns int64 (what
        ``torch.nn.functional.cross_entropy`` and ``nn.Embedding`` want).
        """
        _check_window_args(batch_size=batch_size, seq_len=seq_len)
        train = np.asarray(self.train)  # a plain view: memmap slicing is slower
        _check_split_length("train", len(train), seq_len)
        starts = rng.integers(0, len(train) - seq_len, size=batch_size)
        # Indexing a strided window view copies each row as one contiguous run: about
        # twice as fast as gathering starts[:, None] + arange(seq_len + 1) elementwise.
        rows = self._checked(sliding_window_view(train, seq_len + 1)[starts], "train")
        self._drawn[0] += batch_size
        if self._drawn[0] >= _RELEASE_WINDOWS:  # a memory-mapped file's touched pages
            token_files.release(self.train)  # would otherwise add up in RSS
            self._drawn[0] = 0
        return rows

    def validation_batches(
        self, batch_size: int, seq_len: int, max_tokens: int
    ) -> list[np.ndarray]:
        """A fixed set of validation windows, the same on every call.

        Windows of ``seq_len + 1`` ids do not overlap and are spread evenly from the
        first id of the validation split to its last, so a small budget still samples
        all of it rather than its beginning. There are as many as fit both the split
        and ``max_tokens`` predicted tokens (``seq_len`` per window), but at least one.
        Returns int64 arrays of shape ``(rows, seq_len + 1)``, ``rows == batch_size``
        except possibly in the last.
        """
        _check_window_args(batch_size=batch_size, seq_len=seq_len)
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {max_tokens}")
        validation = np.asarray(self.validation)
        n_ids = len(validation)
        _check_split_length("validation", n_ids, seq_len)
        window = seq_len + 1
        n_windows = max(1, min(n_ids // window, max_tokens // seq_len))
        if n_windows == 1:
            starts = np.zeros(1, dtype=np.int64)
        else:
            # Floors of an even spacing of at least `window` stay at least `window`
            # apart because n_windows * window <= n_ids.
            starts = (
                np.arange(n_windows, dtype=np.int64)
                * (n_ids - window)
                // (n_windows - 1)
            )
        windows = sliding_window_view(validation, window)
        return [
            self._checked(windows[starts[i : i + batch_size]], "validation")
            for i in range(0, n_windows, batch_size)
        ]

    def _checked(self, rows: np.ndarray, split: str) -> np.ndarray:
        """``rows`` as int64, refused if an id is outside the vocabulary: a corpus too big
        to scan whole at load is checked window by window (a max over a batch is free)."""
        top = int(rows.max())
        if top >= self.vocab_size:
            raise CorpusError(
                f"the {split} split of corpus {self.name} holds id {top} but its vocabulary "
                f"has {self.vocab_size} ids: give the tokenizer (or meta.json vocab_size) the "
                f"ids were made with, or check --token-dtype")
        return rows.astype(np.int64)

    def record(self) -> CorpusRecord:
        """What a study records of this corpus (`hptransfer.data.source.CorpusRecord`)."""
        from hptransfer.data.source import CorpusRecord

        return CorpusRecord(source=self.source.value, vocab_size=self.vocab_size,
                            tokenizer=self.tokenizer, tokenizer_hash=self.tokenizer_hash,
                            bytes_per_token=self.bytes_per_token,
                            bytes_per_token_note=self.bytes_per_token_note)

    def describe(self) -> dict[str, str | int | float | None]:
        """A JSON-ready summary for run records (no arrays)."""
        return {
            "name": self.name,
            "source": self.source.value,
            "content_hash": self.content_hash,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "train_tokens": len(self.train),
            "validation_tokens": len(self.validation),
            "tokenizer_hash": self.tokenizer_hash,
            "bytes_per_token": self.bytes_per_token,
            "bytes_per_token_note": self.bytes_per_token_note,
        }

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, source={self.source.value}, "
            f"train_tokens={len(self.train)}, "
            f"validation_tokens={len(self.validation)}, "
            f"vocab_size={self.vocab_size}, content_hash={self.content_hash[:19]}…)"
        )


def load_corpus(
    path: str | os.PathLike[str] | DataSource | None = None,
    *,
    tokenizer: Tokenizer | str | os.PathLike[str] | None = None,
    token_dtype: TokenDType | str | None = None,
    column: str | None = None,
    validation_fraction: float = 0.05,
) -> Corpus:
    """Load the corpus at ``path``, or the built-in one when ``path`` is ``None``.

    - ``None``: the standard library of the running interpreter (see
      `builtin_corpus_files`), byte-tokenized, split by file. Cached per process.
    - a `DataSource` (what ``--data``, ``--tokenizer``, ``--token-dtype`` and
      ``--data-column`` make): its fields are the arguments below.
    - a directory with ``train.bin`` and ``val.bin``: flat token files.
    - a Megatron ``PREFIX.bin`` whose ``PREFIX.idx`` is beside it (or the ``.idx``):
      split by document (`hptransfer.data.megatron`).
    - a ``.bin`` (or ``.npy``) file: flat ids; the last ``validation_fraction`` is validation.
    - a ``.parquet`` or ``.arrow`` file, or a folder of them or saved by ``datasets``: a
      token-id or text column (``column``), split by row (`hptransfer.data.parquet`).
    - any other file: text, decoded as UTF-8 (undecodable bytes kept via
      ``surrogateescape``) and tokenized with ``tokenizer`` (default `ByteTokenizer`)
      chunk by chunk, cached (`hptransfer.data.text`); the last ``validation_fraction``
      of the ids is validation.

    ``tokenizer`` is a `Tokenizer` or the path of a ``tokenizer.json``. Flat token files
    are ``token_dtype`` (``uint16``/``uint32``), else the ``dtype`` of a ``meta.json``
    beside them, else ``uint16`` (refused when the ids look like ``uint32``). The
    vocabulary size of ids is ``tokenizer.vocab_size`` if a tokenizer is given, else the
    ``vocab_size`` of ``meta.json``, else that of a nanoGPT ``meta.pkl`` (read with a
    restricted unpickler that builds only plain data, never code), else the largest id + 1
    (found while hashing; a corpus too big to hash whole needs one of the others).
    ``tokenizer``, ``token_dtype``, ``column`` and ``validation_fraction`` do not apply to
    the built-in corpus.
    """
    from hptransfer.data import parquet
    from hptransfer.data.source import DataSource

    if isinstance(path, DataSource):
        return load_corpus(path.path, tokenizer=path.tokenizer, token_dtype=path.token_dtype,
                           column=path.column, validation_fraction=validation_fraction)
    if not 0.0 < validation_fraction < 1.0:
        raise CorpusError(
            f"validation_fraction must lie in (0, 1), got {validation_fraction}"
        )
    dtype = TokenDType(token_dtype) if token_dtype is not None else None
    if path is None:
        if tokenizer is not None and not isinstance(tokenizer, ByteTokenizer):
            raise CorpusError(
                "the built-in corpus is byte-tokenized; pass a text file path to use "
                f"tokenizer {getattr(tokenizer, 'name', tokenizer)!r}"
            )
        if dtype is not None or column is not None:
            raise CorpusError("--token-dtype and --data-column apply to a --data path; the "
                              "built-in corpus is text")
        return _builtin_corpus(sysconfig.get_paths()["stdlib"])
    resolved = Path(path).expanduser().resolve()
    if not resolved.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist; {_ACCEPTED}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = JsonTokenizer(tokenizer)
    table = parquet.is_table(resolved)
    if column is not None and not table:
        raise CorpusError(f"--data-column {column!r} names a column of a Parquet or Arrow "
                          f"table; {str(path)!r} is not one")
    if resolved.is_dir():
        bins = [resolved / "train.bin", resolved / "val.bin"]
        if any(p.is_file() for p in bins) or not table:
            return _load_token_dir(resolved, tokenizer, dtype)
    elif not resolved.is_file():
        raise CorpusError(
            f"corpus path {str(path)!r} is not a regular file; {_ACCEPTED}"
        )
    if table:
        if dtype is not None:
            raise CorpusError("--token-dtype applies to token files; a table's column says "
                              "its own type")
        return _load_table(resolved, tokenizer, column, validation_fraction)
    from hptransfer.data.megatron import pair

    if resolved.suffix == ".idx" or (resolved.suffix == ".bin" and pair(resolved)[1].is_file()):
        return _load_megatron(resolved, tokenizer, dtype, validation_fraction)
    if resolved.suffix in (".bin", ".npy"):
        return _load_token_file(resolved, tokenizer, dtype, validation_fraction)
    if dtype is not None:
        raise CorpusError(f"--token-dtype applies to token files (.bin, .npy, Megatron); "
                          f"{str(path)!r} is read as text")
    return _load_text_file(resolved, tokenizer or ByteTokenizer(), validation_fraction)


def check_hash(corpus: Corpus, expected: str) -> None:
    """Refuse a corpus whose ids are not the ones a study was tuned on (``expected`` is the
    study's ``corpus_hash``): its losses would not compare with the study's."""
    if corpus.content_hash != expected:
        import socket

        raise CorpusError(
            f"the corpus {corpus.name} on {socket.gethostname()} hashes to "
            f"{corpus.content_hash}, not {expected}, the hash the study was tuned on: pass "
            f"the --data it was tuned with (every worker process and every Ray node must "
            f"see the same data at the same path)")


def builtin_corpus_files() -> list[str]:
    """Relative POSIX paths of the stdlib files in the built-in corpus, sorted.

    Every ``.py`` file under ``sysconfig.get_paths()["stdlib"]`` except those inside a
    directory named ``test``, ``tests``, ``idle_test``, ``site-packages``,
    ``dist-packages`` or ``config-*``, and files named ``test_*.py`` or ``*_test.py``.
    """
    return list(_builtin_files(sysconfig.get_paths()["stdlib"]))


def is_builtin_validation_file(relpath: str) -> bool:
    """Whether the built-in corpus puts ``relpath`` in validation (about 1 file in 20).

    The first 8 bytes of ``sha256(relpath.encode())`` as a big-endian integer, mod 20,
    equal 0.
    """
    digest = hashlib.sha256(relpath.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % _VALIDATION_MODULUS == 0


@functools.lru_cache(maxsize=4)
def _builtin_files(stdlib: str) -> tuple[str, ...]:
    root = Path(stdlib)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Pruning in place stops os.walk descending into test suites at all.
        dirnames[:] = [
            d
            for d in dirnames
            if d not in _EXCLUDED_DIRS and not d.startswith("config-")
        ]
        for filename in filenames:
            if not filename.endswith(".py"):
                continue
            if filename.startswith("test_") or filename.endswith("_test.py"):
                continue
            found.append((Path(dirpath) / filename).relative_to(root).as_posix())
    return tuple(sorted(found))


@functools.lru_cache(maxsize=4)
def _builtin_corpus(stdlib: str) -> Corpus:
    """The built-in corpus for the stdlib at ``stdlib``; cached (a load takes ~0.2 s).

    Each file contributes ``b"# file: <relpath>\\n"`` followed by its bytes, with a
    newline appended if it lacks one; the header lets a model (and a test) see file
    boundaries. Files are read as bytes, so a non-UTF-8 file is still included as is.
    """
    files = _builtin_files(stdlib)
    if not files:
        raise CorpusError(
            f"found no .py sources under the stdlib directory {stdlib!r} (a zipped or "
            "stripped Python install?); pass a text file path to load_corpus instead"
        )
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    root = Path(stdlib)
    for relpath in files:
        data = (root / relpath).read_bytes()
        if not data.endswith(b"\n"):
            data += b"\n"
        parts[is_builtin_validation_file(relpath)] += [
            f"# file: {relpath}\n".encode(),
            data,
        ]
    train = _bytes_to_ids(b"".join(parts[False]))
    validation = _bytes_to_ids(b"".join(parts[True]))
    return Corpus(
        name=f"builtin:python-stdlib-{platform.python_version()}",
        source=CorpusSource.BUILTIN,
        content_hash=token_files.scan(train, validation).content_hash,
        vocab_size=256,
        tokenizer=ByteTokenizer().name,
        train=train,
        validation=validation,
        bytes_per_token=1.0,
    )


def _load_text_file(
    path: Path, tokenizer: Tokenizer, validation_fraction: float
) -> Corpus:
    ids = read_text_ids(path, tokenizer)  # chunk by chunk, cached: hptransfer.data.text
    train, validation = _split_tail(ids, validation_fraction)
    scan = token_files.scan(train, validation)
    _check_vocab(path, scan.max_id, tokenizer.vocab_size, f"tokenizer {tokenizer.name!r}")
    return _record(path, CorpusSource.TEXT, scan.content_hash, tokenizer.vocab_size, tokenizer,
                   train, validation, _bytes_per_token(tokenizer, validation))


def _load_token_dir(path: Path, tokenizer: Tokenizer | None, dtype: TokenDType | None
                    ) -> Corpus:
    train_path, val_path = path / "train.bin", path / "val.bin"
    missing = [p.name for p in (train_path, val_path) if not p.is_file()]
    if missing:
        raise CorpusError(
            f"corpus directory {str(path)!r} has no {' or '.join(missing)}; {_ACCEPTED}"
        )
    meta = token_files.read_sidecar(path)
    dtype, given_by = _dtype(path, dtype, meta)
    train, validation = (token_files.memmap_ids(p, dtype, given_by=given_by)
                         for p in (train_path, val_path))
    if given_by == _DEFAULT_DTYPE:
        token_files.check_width(train_path, train)
    return _token_corpus(path, train, validation, tokenizer, meta, CorpusSource.TOKENS)


def _load_token_file(path: Path, tokenizer: Tokenizer | None, dtype: TokenDType | None,
                     validation_fraction: float) -> Corpus:
    meta = token_files.read_sidecar(path.parent)
    with path.open("rb") as handle:
        numpy_file = handle.read(6) == b"\x93NUMPY"
    if numpy_file:  # a real .npy (OLMo's .npy files are raw memmaps, read below)
        ids = np.load(path, mmap_mode="r")
        if ids.ndim != 1 or ids.dtype.kind != "u" or ids.dtype.itemsize not in (2, 4):
            raise CorpusError(f"{str(path)!r} holds a {ids.dtype} array of shape {ids.shape}; "
                              f"give a 1-D uint16 or uint32 array of token ids")
    else:
        dtype, given_by = _dtype(path, dtype, meta)
        ids = token_files.memmap_ids(path, dtype, given_by=given_by)
        if given_by == _DEFAULT_DTYPE:
            token_files.check_width(path, ids)
    train, validation = _split_tail(ids, validation_fraction)
    return _token_corpus(path, train, validation, tokenizer, meta, CorpusSource.TOKENS)


def _load_megatron(path: Path, tokenizer: Tokenizer | None, dtype: TokenDType | None,
                   validation_fraction: float) -> Corpus:
    from hptransfer.data.megatron import pair, read_megatron

    data = read_megatron(path, validation_fraction)
    if dtype is not None and dtype is not data.dtype:
        raise CorpusError(f"--token-dtype {dtype.value}, but the Megatron index of "
                          f"{str(path)!r} says its ids are {data.dtype.value}; drop the flag")
    return _token_corpus(pair(path)[0], data.train, data.validation, tokenizer,
                         token_files.read_sidecar(path.parent), CorpusSource.MEGATRON)


def _load_table(path: Path, tokenizer: Tokenizer | None, column: str | None,
                validation_fraction: float) -> Corpus:
    from hptransfer.data.parquet import read_table

    table = read_table(path, column=column, tokenizer=tokenizer,
                       validation_fraction=validation_fraction)
    for split, ids in (("train", table.train), ("validation", table.validation)):
        if not len(ids):
            raise CorpusError(f"the {split} rows of column {table.column!r} of {str(path)!r} "
                              f"hold no tokens")
    if table.validation_bytes is None:  # ids: the same as token files from here
        meta = token_files.read_sidecar(path if path.is_dir() else path.parent)
        if tokenizer is None and meta.vocab_size is None:
            meta = token_files.TokenMeta(vocab_size=table.vocab_size, path=Path(
                f"the largest id of column {table.column!r}"))
        return _token_corpus(path, table.train, table.validation, tokenizer, meta,
                             CorpusSource.TABLE)
    scan = token_files.scan(table.train, table.validation)
    _check_vocab(path, scan.max_id, tokenizer.vocab_size, f"tokenizer {tokenizer.name!r}")
    per_token = table.validation_bytes / len(table.validation), None
    return _record(path, CorpusSource.TABLE, scan.content_hash, tokenizer.vocab_size,
                   tokenizer, table.train, table.validation, per_token)


_DEFAULT_DTYPE = "nanoGPT's default uint16 (no --token-dtype, no meta.json dtype)"


def _dtype(path: Path, given: TokenDType | None, meta: token_files.TokenMeta
           ) -> tuple[TokenDType, str]:
    """The ids' width and where it came from: the flag, the sidecar, or the default."""
    if given is not None and meta.dtype is not None and given is not meta.dtype:
        raise CorpusError(f"--token-dtype {given.value}, but {meta.path} says "
                          f"{meta.dtype.value}; give one, or the same in both")
    if given is not None:
        return given, f"--token-dtype {given.value}"
    if meta.dtype is not None:
        return meta.dtype, f"{meta.path}"
    return TokenDType.UINT16, _DEFAULT_DTYPE


# A vocabulary this large from the largest id means the ids are not what they seem (uint16
# ids read as uint32 make ids in the hundreds of millions) rather than a real tokenizer's.
_LARGEST_PLAUSIBLE_VOCAB = 1 << 24


def _token_corpus(path: Path, train: np.ndarray, validation: np.ndarray,
                  tokenizer: Tokenizer | None, meta: token_files.TokenMeta,
                  source: CorpusSource) -> Corpus:
    scan = token_files.scan(train, validation)
    meta_pkl = (path if path.is_dir() else path.parent) / "meta.pkl"
    if tokenizer is not None:
        vocab_size, vocab_from = tokenizer.vocab_size, f"tokenizer {tokenizer.name!r}"
    elif meta.vocab_size is not None:
        vocab_size, vocab_from = meta.vocab_size, str(meta.path)
    elif meta_pkl.is_file() and isinstance(pkl := _read_meta(meta_pkl), dict) \
            and "vocab_size" in pkl:
        vocab_size, vocab_from = int(pkl["vocab_size"]), str(meta_pkl)
    elif scan.max_id is not None:
        vocab_size, vocab_from = scan.max_id + 1, "the largest id"
        if vocab_size > _LARGEST_PLAUSIBLE_VOCAB:
            raise CorpusError(
                f"corpus {str(path)!r} holds id {scan.max_id}, far beyond any tokenizer's "
                f"vocabulary: are its ids another width? give --token-dtype uint16|uint32")
    else:
        raise CorpusError(
            f"corpus {str(path)!r} is too big to find its largest id on every load: give its "
            f"vocabulary size with --tokenizer, or in {token_files.SIDECAR} beside it: "
            f'{{"vocab_size": N}}')
    _check_vocab(path, scan.max_id, vocab_size, vocab_from)
    if tokenizer is not None:
        per_token = _bytes_per_token(tokenizer, validation)
    else:
        per_token = None, ("token ids without their tokenizer: give --tokenizer (the "
                           "tokenizer.json that made them) for bits per byte")
    return _record(path, source, scan.content_hash, vocab_size, tokenizer, train, validation,
                   per_token)


def _record(path: Path, source: CorpusSource, ids_hash: str, vocab_size: int,
            tokenizer: Tokenizer | None, train: np.ndarray, validation: np.ndarray,
            per_token: tuple[float | None, str | None]) -> Corpus:
    """The corpus record; a tokenizer file's hash joins the ids' hash in content_hash."""
    file_hash = getattr(tokenizer, "file_hash", None)
    content_hash = ids_hash
    if file_hash is not None:
        hasher = hashlib.sha256(b"hptransfer-corpus+tokenizer-v1\n")
        hasher.update(f"{ids_hash}\n{file_hash}".encode())
        content_hash = "sha256:" + hasher.hexdigest()
    return Corpus(
        name=str(path), source=source, content_hash=content_hash, vocab_size=vocab_size,
        # Ids made elsewhere: only a tokenizer passed in can say by what.
        tokenizer=tokenizer.name if tokenizer is not None else "unknown",
        train=train, validation=validation, tokenizer_hash=file_hash,
        bytes_per_token=per_token[0], bytes_per_token_note=per_token[1])


def _bytes_per_token(tokenizer: Tokenizer, validation: np.ndarray
                     ) -> tuple[float | None, str | None]:
    """UTF-8 bytes per validation token, decoding at most _DECODE_IDS ids."""
    if isinstance(tokenizer, ByteTokenizer):
        return 1.0, None
    n = len(validation)
    if n <= _DECODE_IDS:
        runs = [validation]
    else:  # evenly spaced runs: a cut mid-character costs a byte or two per run
        starts = np.linspace(0, n - _DECODE_RUN, _DECODE_IDS // _DECODE_RUN).astype(np.int64)
        runs = [validation[s:s + _DECODE_RUN] for s in starts]
    try:
        decoded = sum(len(tokenizer.decode(np.asarray(r)).encode("utf-8", "surrogateescape"))
                      for r in runs)
    except Exception as error:  # a decoder that cannot take these ids
        return None, f"tokenizer {tokenizer.name!r} could not decode the ids ({error})"
    return decoded / sum(len(r) for r in runs), None


class _PlainData(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, strings, numbers, booleans and
    None: a nanoGPT ``meta.pkl`` holds nothing else, and a crafted one that names a
    callable (the way pickles run code) is refused instead of run."""

    def find_class(self, module: str, name: str):
        raise CorpusError(f"meta.pkl names {module}.{name}: it holds code, not the plain "
                          f"vocabulary data of a nanoGPT meta.pkl, and is not loaded")


def _read_meta(path: Path) -> object:
    try:
        with path.open("rb") as handle:
            return _PlainData(handle).load()
    except CorpusError as error:
        raise CorpusError(f"{path}: {error}; delete it, or give the vocabulary size with a "
                          f"tokenizer") from None
    except Exception as error:  # truncated or not a pickle at all
        raise CorpusError(f"{path} is not a readable nanoGPT meta.pkl ({type(error).__name__}:"
                          f" {error}); delete it, or give the vocabulary size with a "
                          f"tokenizer") from None


def _split_tail(
    ids: np.ndarray, validation_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Train is the head, validation the last ``validation_fraction`` of ``ids``."""
    n_validation = round(len(ids) * validation_fraction)
    cut = len(ids) - n_validation
    return ids[:cut], ids[cut:]


def _bytes_to_ids(data: bytes) -> np.ndarray:
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
    # The built-in corpus is shared by the process-wide cache: nobody may mutate it.
    ids.setflags(write=False)
    return ids


def _check_vocab(path: Path, max_id: int | None, vocab_size: int, vocab_from: str) -> None:
    """Refuse an id outside the vocabulary (None: not scanned; checked batch by batch)."""
    if max_id is not None and max_id >= vocab_size:
        raise CorpusError(
            f"corpus {str(path)!r} contains id {max_id} but the vocabulary size from "
            f"{vocab_from} is {vocab_size}"
        )


def _check_window_args(*, batch_size: int, seq_len: int) -> None:
    if batch_size <= 0 or seq_len <= 0:
        raise ValueError(
            f"batch_size and seq_len must be positive, got batch_size={batch_size}, "
            f"seq_len={seq_len}"
        )


def _check_split_length(split: str, n_ids: int, seq_len: int) -> None:
    if n_ids < seq_len + 1:
        raise CorpusError(
            f"{split} split has {n_ids} tokens, need at least seq_len+1={seq_len + 1}; "
            "use a larger file or a shorter --seq-len"
        )

"""The corpus proxy models train on: token ids split into train and validation.

`load_corpus` accepts three kinds of source (`CorpusSource`):

- ``None``: the built-in corpus, the running interpreter's own standard library
  sources, byte-tokenized. Every Python install has it, so tests and examples need no
  download; and it is real, varied text (code, docstrings, comments): ~12 MB on 3.11.
- a text file, tokenized with `ByteTokenizer` or the tokenizer given.
- nanoGPT-style token files: a directory with ``train.bin`` and ``val.bin``, or one
  ``.bin`` file, of little-endian ``uint16`` ids (what nanoGPT's ``prepare.py`` writes).

The returned `Corpus` is an immutable record with a ``content_hash`` of its token ids,
so run records can say exactly what data a run saw. This module uses numpy only: batches
are int64 arrays that the training loop moves to torch itself.

>>> corpus = load_corpus()
>>> corpus.vocab_size, corpus.tokenizer
(256, 'bytes')
>>> corpus.train_batch(np.random.default_rng(0), batch_size=4, seq_len=16).shape
(4, 17)
"""

from __future__ import annotations

import enum
import functools
import hashlib
import os
import pickle
import platform
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from hptransfer.data.tokenizer import ByteTokenizer, Tokenizer
from hptransfer.errors import CorpusError

__all__ = [
    "Corpus",
    "CorpusError",
    "CorpusSource",
    "CorpusWarning",
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

# Token files are read this many ids at a time when hashing, so a multi-GB memmap is
# never resident at once.
_HASH_CHUNK = 1 << 24

_ACCEPTED = (
    "expected a text file, a .bin token file, or a directory with train.bin and val.bin"
)


class CorpusSource(str, enum.Enum):
    """Where a corpus's token ids came from."""

    BUILTIN = "builtin"
    """The running interpreter's standard library sources, byte-tokenized."""
    TEXT = "text"
    """A text file, tokenized on load."""
    TOKENS = "tokens"
    """Pre-tokenized nanoGPT-style ``.bin`` files, memory-mapped."""


# eq=False: a field-wise == would compare arrays, whose truth value is ambiguous;
# compare corpora by content_hash instead.
@dataclass(frozen=True, eq=False)
class Corpus:
    """Token ids split into train and validation, with what is needed to record them.

    ``train`` and ``validation`` are 1-D ``uint16`` arrays (``np.memmap`` for ``.bin``
    sources, read-only arrays otherwise). ``content_hash`` is ``"sha256:" + hex`` of,
    in order: the bytes ``b"hptransfer-corpus-v1\\n"``, the train length as 8
    little-endian bytes, the train ids as little-endian ``uint16``, the validation
    length likewise, and the validation ids. It depends on the ids and the
    split only, never on paths or mtimes, so the same data hashes the same anywhere.
    """

    name: str
    source: CorpusSource
    content_hash: str
    vocab_size: int
    tokenizer: str
    train: np.ndarray
    validation: np.ndarray

    def __post_init__(self) -> None:
        for split, ids in (("train", self.train), ("validation", self.validation)):
            # Compare kind and size, not dtype: a memmap's "<u2" is not the native
            # uint16 on a big-endian host, yet holds the same ids.
            if ids.ndim != 1 or ids.dtype.kind != "u" or ids.dtype.itemsize != 2:
                raise CorpusError(
                    f"{split} split must be a 1-D uint16 array, "
                    f"got shape {ids.shape} dtype {ids.dtype}"
                )
        if not 0 < self.vocab_size <= 1 << 16:
            raise CorpusError(
                f"vocab_size must lie in [1, 65536], got {self.vocab_size}"
            )

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
        return sliding_window_view(train, seq_len + 1)[starts].astype(np.int64)

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
            windows[starts[i : i + batch_size]].astype(np.int64)
            for i in range(0, n_windows, batch_size)
        ]

    def describe(self) -> dict[str, str | int]:
        """A JSON-ready summary for run records (no arrays)."""
        return {
            "name": self.name,
            "source": self.source.value,
            "content_hash": self.content_hash,
            "vocab_size": self.vocab_size,
            "tokenizer": self.tokenizer,
            "train_tokens": len(self.train),
            "validation_tokens": len(self.validation),
        }

    def __repr__(self) -> str:
        return (
            f"Corpus(name={self.name!r}, source={self.source.value}, "
            f"train_tokens={len(self.train)}, "
            f"validation_tokens={len(self.validation)}, "
            f"vocab_size={self.vocab_size}, content_hash={self.content_hash[:19]}…)"
        )


def load_corpus(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer: Tokenizer | None = None,
    validation_fraction: float = 0.05,
) -> Corpus:
    """Load the corpus at ``path``, or the built-in one when ``path`` is ``None``.

    - ``None``: the standard library of the running interpreter (see
      `builtin_corpus_files`), byte-tokenized, split by file. Cached per process.
    - a directory: must contain nanoGPT's ``train.bin`` and ``val.bin``.
    - a ``.bin`` file: ``uint16`` ids; the last ``validation_fraction`` is validation.
    - any other file: text, decoded as UTF-8 (undecodable bytes kept via
      ``surrogateescape``) and tokenized with ``tokenizer`` (default `ByteTokenizer`);
      the last ``validation_fraction`` of the ids is validation.

    For ``.bin`` sources the vocabulary size is ``tokenizer.vocab_size`` if a tokenizer
    is given, else the ``vocab_size`` in a nanoGPT ``meta.pkl`` beside the files (read
    read with a restricted unpickler that builds only plain data, never code), else the largest
    id + 1.
    ``tokenizer`` and ``validation_fraction`` do not apply to the built-in corpus.
    """
    if not 0.0 < validation_fraction < 1.0:
        raise CorpusError(
            f"validation_fraction must lie in (0, 1), got {validation_fraction}"
        )
    if path is None:
        if tokenizer is not None and not isinstance(tokenizer, ByteTokenizer):
            raise CorpusError(
                "the built-in corpus is byte-tokenized; pass a text file path to use "
                f"tokenizer {tokenizer.name!r}"
            )
        return _builtin_corpus(sysconfig.get_paths()["stdlib"])
    resolved = Path(path).expanduser().resolve()
    if resolved.is_dir():
        return _load_token_dir(resolved, tokenizer)
    if not resolved.exists():
        raise CorpusError(f"corpus path {str(path)!r} does not exist; {_ACCEPTED}")
    if not resolved.is_file():
        raise CorpusError(
            f"corpus path {str(path)!r} is not a regular file; {_ACCEPTED}"
        )
    if resolved.suffix == ".bin":
        return _load_token_file(resolved, tokenizer, validation_fraction)
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
    content_hash, _ = _scan(train, validation)
    return Corpus(
        name=f"builtin:python-stdlib-{platform.python_version()}",
        source=CorpusSource.BUILTIN,
        content_hash=content_hash,
        vocab_size=256,
        tokenizer=ByteTokenizer().name,
        train=train,
        validation=validation,
    )


def _load_text_file(
    path: Path, tokenizer: Tokenizer, validation_fraction: float
) -> Corpus:
    data = path.read_bytes()
    if not data:
        raise CorpusError(f"corpus file {str(path)!r} is empty")
    _check_text(path, data)
    ids = tokenizer.encode(data.decode("utf-8", errors="surrogateescape"))
    ids = np.asarray(ids)
    if ids.ndim != 1 or ids.dtype != np.uint16:
        raise CorpusError(
            f"tokenizer {tokenizer.name!r} returned shape {ids.shape} dtype "
            f"{ids.dtype}; Tokenizer.encode must return a 1-D uint16 array"
        )
    ids.setflags(write=False)
    train, validation = _split_tail(ids, validation_fraction)
    content_hash, max_id = _scan(train, validation)
    _check_vocab(path, max_id, tokenizer.vocab_size, f"tokenizer {tokenizer.name!r}")
    return Corpus(
        name=str(path),
        source=CorpusSource.TEXT,
        content_hash=content_hash,
        vocab_size=tokenizer.vocab_size,
        tokenizer=tokenizer.name,
        train=train,
        validation=validation,
    )


class CorpusWarning(UserWarning):
    """Data that loads, but probably not as meant (shown as a ``warning:`` line)."""


# NUL bytes do not occur in text; a file with them is a program, an archive or token ids
_BINARY_SAMPLE = 1 << 20


def _check_text(path: Path, data: bytes) -> None:
    """Refuse binary data given as text; warn about text that is not UTF-8 (a byte model
    trains on its bytes as they are, which is only right if that was meant)."""
    if b"\x00" in data[:_BINARY_SAMPLE]:
        raise CorpusError(
            f"corpus file {str(path)!r} is binary (it holds NUL bytes), not text: give a text "
            f"file, a .bin file of uint16 token ids, or a folder with train.bin and val.bin")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as error:
        import warnings

        warnings.warn(f"corpus file {str(path)!r} is not valid UTF-8 (first bad byte at "
                      f"{error.start}); its bytes are trained on as they are", CorpusWarning,
                      stacklevel=3)


def _load_token_dir(path: Path, tokenizer: Tokenizer | None) -> Corpus:
    train_path, val_path = path / "train.bin", path / "val.bin"
    missing = [p.name for p in (train_path, val_path) if not p.is_file()]
    if missing:
        raise CorpusError(
            f"corpus directory {str(path)!r} has no {' or '.join(missing)}; {_ACCEPTED}"
        )
    return _token_corpus(path, _memmap(train_path), _memmap(val_path), tokenizer)


def _load_token_file(
    path: Path, tokenizer: Tokenizer | None, validation_fraction: float
) -> Corpus:
    train, validation = _split_tail(_memmap(path), validation_fraction)
    return _token_corpus(path, train, validation, tokenizer)


def _token_corpus(
    path: Path, train: np.ndarray, validation: np.ndarray, tokenizer: Tokenizer | None
) -> Corpus:
    content_hash, max_id = _scan(train, validation)
    meta_path = (path if path.is_dir() else path.parent) / "meta.pkl"
    if tokenizer is not None:
        vocab_size, vocab_from = tokenizer.vocab_size, f"tokenizer {tokenizer.name!r}"
    elif meta_path.is_file():
        meta = _read_meta(meta_path)
        has_vocab = isinstance(meta, dict) and "vocab_size" in meta
        vocab_size = int(meta["vocab_size"]) if has_vocab else max_id + 1
        vocab_from = str(meta_path)
    else:
        vocab_size, vocab_from = max_id + 1, "the largest id"
    _check_vocab(path, max_id, vocab_size, vocab_from)
    return Corpus(
        name=str(path),
        source=CorpusSource.TOKENS,
        content_hash=content_hash,
        vocab_size=vocab_size,
        # The ids were made elsewhere; only a tokenizer passed in can say by what.
        tokenizer=tokenizer.name if tokenizer is not None else "unknown",
        train=train,
        validation=validation,
    )


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


def _memmap(path: Path) -> np.ndarray:
    size = path.stat().st_size
    if size == 0:
        raise CorpusError(f"token file {str(path)!r} is empty")
    if size % 2:
        raise CorpusError(
            f"token file {str(path)!r} has {size} bytes, not a whole number of uint16 "
            "ids; is it really a nanoGPT .bin file?"
        )
    return np.memmap(path, dtype="<u2", mode="r")


def _split_tail(
    ids: np.ndarray, validation_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Train is the head, validation the last ``validation_fraction`` of ``ids``."""
    n_validation = round(len(ids) * validation_fraction)
    cut = len(ids) - n_validation
    return ids[:cut], ids[cut:]


def _scan(train: np.ndarray, validation: np.ndarray) -> tuple[str, int]:
    """``content_hash`` (format in `Corpus`) and the largest id, in one chunked pass."""
    hasher = hashlib.sha256(b"hptransfer-corpus-v1\n")
    max_id = -1
    for ids in (train, validation):
        hasher.update(len(ids).to_bytes(8, "little"))
        for start in range(0, len(ids), _HASH_CHUNK):
            chunk = np.ascontiguousarray(ids[start : start + _HASH_CHUNK], dtype="<u2")
            hasher.update(memoryview(chunk).cast("B"))
            max_id = max(max_id, int(chunk.max()))
    return "sha256:" + hasher.hexdigest(), max_id


def _bytes_to_ids(data: bytes) -> np.ndarray:
    ids = np.frombuffer(data, dtype=np.uint8).astype(np.uint16)
    # The built-in corpus is shared by the process-wide cache: nobody may mutate it.
    ids.setflags(write=False)
    return ids


def _check_vocab(path: Path, max_id: int, vocab_size: int, vocab_from: str) -> None:
    if max_id >= vocab_size:
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

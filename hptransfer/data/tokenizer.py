"""Tokenizers: the map between text and the token ids a corpus is made of.

`Tokenizer` is the extension point: anything with a ``name``, a ``vocab_size`` and
``encode``/``decode`` can turn a text file into a `hptransfer.data.corpus.Corpus`.
`ByteTokenizer` is the reference implementation: one token per UTF-8 byte, so it needs
no vocabulary file, never fails on odd input, and makes the proxies' vocabulary tiny
(256), which keeps the embedding and readout cheap on CPU. `JsonTokenizer` reads a Hugging
Face ``tokenizer.json`` (BPE, WordPiece, Unigram: a 32k–150k vocabulary) from a local file
with the optional ``tokenizers`` library; nothing is ever downloaded.

Token ids are ``uint16`` when the vocabulary fits (≤ 65,536, GPT-2's 50,257 included: half
the memory) and ``uint32`` above (Llama 3's 128,256).

>>> tok = ByteTokenizer()
>>> ids = tok.encode("héllo")
>>> ids.dtype, ids.tolist()
(dtype('uint16'), [104, 195, 169, 108, 108, 111])
>>> tok.decode(ids)
'héllo'
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from hptransfer.errors import CorpusError

__all__ = ["ByteTokenizer", "JsonTokenizer", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What a corpus needs from a tokenizer; implement it to plug in e.g. a BPE.

    ``name`` identifies the tokenizer in run records (two runs compare only if they
    tokenized the same way); ``vocab_size`` sizes the model's embedding and readout.
    """

    @property
    def name(self) -> str:
        """Stable identifier recorded with every run, e.g. ``"bytes"``."""
        ...

    @property
    def vocab_size(self) -> int:
        """Number of distinct ids; every id from `encode` is below it."""
        ...

    def encode(self, text: str) -> np.ndarray:
        """Token ids of ``text``: 1-D ``uint16`` (vocabulary ≤ 65,536) or ``uint32``."""
        ...

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids``; never raises on ids from `encode`."""
        ...


class ByteTokenizer:
    """One token per UTF-8 byte: ``name="bytes"``, ``vocab_size=256``.

    `encode` uses the ``surrogateescape`` error handler, so text that was read with
    ``bytes.decode("utf-8", "surrogateescape")`` maps back to exactly the original
    bytes, valid UTF-8 or not. `decode` replaces invalid sequences (a window cut
    mid-character) with U+FFFD instead of raising.

    >>> ByteTokenizer().decode([0xE2, 0x82])  # a truncated "€"
    '\ufffd'
    """

    @property
    def name(self) -> str:
        """Always ``"bytes"``."""
        return "bytes"

    @property
    def vocab_size(self) -> int:
        """Always 256."""
        return 256

    def encode(self, text: str) -> np.ndarray:
        """UTF-8 bytes of ``text`` as ``uint16`` ids in ``[0, 256)``."""
        data = text.encode("utf-8", errors="surrogateescape")
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of the bytes ``ids``; `ValueError` for an id outside ``[0, 256)``."""
        arr = np.asarray(ids)
        if arr.size and (arr.min() < 0 or arr.max() >= 256):
            raise ValueError(
                f"ByteTokenizer ids must lie in [0, 256), got ids in "
                f"[{arr.min()}, {arr.max()}]; were these ids made by another tokenizer?"
            )
        return arr.astype(np.uint8).tobytes().decode("utf-8", errors="replace")

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class JsonTokenizer:
    """A Hugging Face ``tokenizer.json`` at a local path, through the ``tokenizers`` library.

    ``name`` is the file's folder and name (``llama3/tokenizer.json``), ``file_hash``
    ``"sha256:" + hex`` of its bytes: a corpus tokenized with it records both, and its
    ``content_hash`` includes the file hash, so runs tokenized differently never share a
    study. ``vocab_size`` counts added (special) tokens. Ids are ``uint16`` when the
    vocabulary fits, else ``uint32``. Special tokens are not added on `encode` (documents
    are concatenated as they are) and are skipped on `decode`.

    Raises :class:`~hptransfer.errors.CorpusError` (exit 2) when the file is missing, the
    library is not installed, or the file does not load.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise CorpusError(f"--tokenizer {str(path)!r} is not a file; give the path of a "
                              f"tokenizer.json (nothing is downloaded)")
        try:
            from tokenizers import Tokenizer as HFTokenizer
        except ModuleNotFoundError:
            raise CorpusError("--tokenizer needs the tokenizers library: pip install "
                              "'hptransfer[tokenizers]'") from None
        data = self.path.read_bytes()
        try:
            self._tokenizer = HFTokenizer.from_str(data.decode("utf-8"))
        except Exception as error:  # not UTF-8, not JSON, or not a tokenizer the library knows
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CorpusError(f"--tokenizer {str(path)!r} does not load as a tokenizer.json "
                              f"({reason}); give the tokenizer.json your model was trained "
                              f"with") from None
        self.file_hash = "sha256:" + hashlib.sha256(data).hexdigest()
        self._vocab = self._tokenizer.get_vocab_size(with_added_tokens=True)
        self._dtype = np.uint16 if self._vocab <= 1 << 16 else np.uint32

    @property
    def name(self) -> str:
        """The file's folder and name, e.g. ``llama3/tokenizer.json``."""
        return f"{self.path.resolve().parent.name}/{self.path.name}"

    @property
    def vocab_size(self) -> int:
        """Every id the tokenizer can produce is below it (added tokens included)."""
        return self._vocab

    def encode(self, text: str) -> np.ndarray:
        """Ids of ``text`` (no special tokens added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Ids of each text, encoded in parallel by the library."""
        # text read with surrogateescape may hold lone surrogates, which Rust strings
        # cannot: those bytes become U+FFFD for this tokenizer
        clean = [t.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                 for t in texts]
        return [np.asarray(e.ids, dtype=self._dtype)
                for e in self._tokenizer.encode_batch(clean, add_special_tokens=False)]

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Text of ``ids`` (special tokens skipped)."""
        return self._tokenizer.decode(np.asarray(ids).tolist(), skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"JsonTokenizer({str(self.path)!r})"

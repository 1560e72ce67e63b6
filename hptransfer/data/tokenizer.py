"""Tokenizers: the map between text and the token ids a corpus is made of.

`Tokenizer` is the extension point: anything with a ``name``, a ``vocab_size`` and
``encode``/``decode`` can turn a text file into a `hptransfer.data.corpus.Corpus`.
`ByteTokenizer` is the reference implementation: one token per UTF-8 byte, so it needs
no vocabulary file, never fails on odd input, and makes the proxies' vocabulary tiny
(256), which keeps the embedding and readout cheap on CPU.

Token ids are ``uint16`` everywhere, like nanoGPT's ``.bin`` files: every vocabulary a
proxy model will use fits (GPT-2's 50,257 included) and it halves memory against int32.

>>> tok = ByteTokenizer()
>>> ids = tok.encode("héllo")
>>> ids.dtype, ids.tolist()
(dtype('uint16'), [104, 195, 169, 108, 108, 111])
>>> tok.decode(ids)
'héllo'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["ByteTokenizer", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """What a corpus needs from a tokenizer; implement it to plug in e.g. a BPE.

    ``name`` identifies the tokenizer in run records (two runs compare only if they
    tokenized the same way); ``vocab_size`` sizes the model's embedding and readout and
    must be at most 65,536 because ids are stored as ``uint16``.
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
        """Token ids of ``text`` as a 1-D ``uint16`` array."""
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

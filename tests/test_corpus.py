"""Tests for hptransfer.data.corpus and hptransfer.data.tokenizer: loading, hashing, batching."""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from hptransfer.data import corpus as corpus_module
from hptransfer.data.corpus import (
    Corpus,
    CorpusError,
    CorpusSource,
    CorpusWarning,
    builtin_corpus_files,
    is_builtin_validation_file,
    load_corpus,
)
from hptransfer.data.tokenizer import ByteTokenizer, Tokenizer

_HEADER = re.compile(rb"^# file: (\S+)$", re.MULTILINE)


def _headers(ids: np.ndarray) -> list[str]:
    """Relative paths named by the built-in corpus's per-file headers in ``ids``."""
    return [
        m.decode() for m in _HEADER.findall(np.asarray(ids, dtype=np.uint8).tobytes())
    ]


def _write_text(path: Path, n_bytes: int, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    data = rng.integers(ord("a"), ord("z") + 1, size=n_bytes, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    return data


def _tiny_corpus(train: np.ndarray, validation: np.ndarray) -> Corpus:
    return Corpus(
        name="tiny",
        source=CorpusSource.TEXT,
        content_hash="sha256:0",
        vocab_size=1 << 16,
        tokenizer="none",
        train=train.astype(np.uint16),
        validation=validation.astype(np.uint16),
    )


# --- tokenizer ------------------------------------------------------------------------


def test_byte_tokenizer_round_trip() -> None:
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.name, tok.vocab_size) == ("bytes", 256)
    ids = tok.encode("µP ✓")
    assert ids.dtype == np.uint16
    assert ids.ndim == 1
    assert ids.tolist() == list("µP ✓".encode())
    assert tok.decode(ids) == "µP ✓"
    assert tok.decode(ids[:1]) == "\ufffd"  # half a character decodes, never raises
    with pytest.raises(ValueError, match="256"):
        tok.decode([300])


# --- built-in corpus ------------------------------------------------------------------


def test_builtin_corpus_excludes_test_suites() -> None:
    files = builtin_corpus_files()
    assert files == sorted(files)
    assert {"os.py", "json/decoder.py", "unittest/case.py"} <= set(files)
    test_dirs = {"test", "tests", "idle_test", "site-packages", "dist-packages"}
    for relpath in files:
        parts = relpath.split("/")
        assert relpath.endswith(".py")
        assert not test_dirs & set(parts[:-1]), relpath
        assert not parts[-1].startswith("test_"), relpath


def test_builtin_corpus_loads_split_by_file_deterministically() -> None:
    corpus_module._builtin_corpus.cache_clear()
    first = load_corpus()
    corpus_module._builtin_corpus.cache_clear()
    second = load_corpus()
    assert first is not second
    assert first.content_hash == second.content_hash
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", first.content_hash)
    assert load_corpus() is second  # cached in-process

    assert first.source is CorpusSource.BUILTIN
    assert first.name.startswith("builtin:python-stdlib-")
    assert (first.vocab_size, first.tokenizer) == (256, "bytes")
    assert first.train.dtype == np.uint16
    assert not first.train.flags.writeable  # shared by the cache: must stay intact
    # 3.11's stdlib without tests is ~12 MB; any CPython is several MB.
    assert len(first.train) > 2_000_000
    assert 0.005 < len(first.validation) / len(first.train) < 0.2

    train_files, val_files = _headers(first.train), _headers(first.validation)
    assert not set(train_files) & set(val_files)
    assert sorted(train_files + val_files) == builtin_corpus_files()
    assert all(is_builtin_validation_file(f) for f in val_files)
    assert not any(is_builtin_validation_file(f) for f in train_files)


def test_builtin_corpus_describe_is_plain_data() -> None:
    corpus = load_corpus()
    record = corpus.describe()
    assert record == {
        "name": corpus.name,
        "source": "builtin",
        "content_hash": corpus.content_hash,
        "vocab_size": 256,
        "tokenizer": "bytes",
        "train_tokens": len(corpus.train),
        "validation_tokens": len(corpus.validation),
        "tokenizer_hash": None,
        "bytes_per_token": 1.0,  # bytes: one per token, so bits per byte = loss / ln 2
        "bytes_per_token_note": None,
    }
    assert all(type(v) in (str, int, float, type(None)) for v in record.values())


# --- text files -----------------------------------------------------------------------


def test_text_file_split_and_hash(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    data = _write_text(path, 1000)
    corpus = load_corpus(path, validation_fraction=0.1)
    assert corpus.source is CorpusSource.TEXT
    assert corpus.name == str(path.resolve())
    assert (len(corpus.train), len(corpus.validation)) == (900, 100)
    assert (
        bytes(corpus.train.astype(np.uint8)) + bytes(corpus.validation.astype(np.uint8))
        == data
    )
    assert (
        load_corpus(str(path), validation_fraction=0.1).content_hash
        == corpus.content_hash
    )

    path.write_bytes(data[:-1] + b"!")
    assert (
        load_corpus(path, validation_fraction=0.1).content_hash != corpus.content_hash
    )
    # Same ids, different split: a different corpus.
    path.write_bytes(data)
    assert (
        load_corpus(path, validation_fraction=0.2).content_hash != corpus.content_hash
    )


def test_text_file_keeps_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    data = "café ".encode("latin-1") * 50
    path.write_bytes(data)
    # the user is told, once, that the file is not UTF-8 and where its first bad byte is
    with pytest.warns(CorpusWarning, match="not valid UTF-8 \\(first bad byte at 3\\)"):
        corpus = load_corpus(path)
    ids = np.concatenate([corpus.train, corpus.validation])
    assert ids.astype(np.uint8).tobytes() == data


# --- nanoGPT token files --------------------------------------------------------------


def test_token_directory_without_meta(tmp_path: Path) -> None:
    train = np.arange(3000, dtype=np.uint16) % 500
    val = np.arange(400, dtype=np.uint16) % 70
    train.tofile(tmp_path / "train.bin")
    val.tofile(tmp_path / "val.bin")
    corpus = load_corpus(tmp_path)
    assert corpus.source is CorpusSource.TOKENS
    assert corpus.tokenizer == "unknown"
    assert isinstance(corpus.train, np.memmap)
    np.testing.assert_array_equal(corpus.train, train)
    np.testing.assert_array_equal(corpus.validation, val)
    assert corpus.vocab_size == 500  # largest id + 1


def test_token_directory_with_meta(tmp_path: Path) -> None:
    (np.arange(200, dtype=np.uint16) % 65).tofile(tmp_path / "train.bin")
    (np.arange(50, dtype=np.uint16) % 65).tofile(tmp_path / "val.bin")
    with (tmp_path / "meta.pkl").open("wb") as f:
        pickle.dump({"vocab_size": 65, "itos": {}, "stoi": {}}, f)
    corpus = load_corpus(tmp_path)
    assert corpus.vocab_size == 65

    with (tmp_path / "meta.pkl").open("wb") as f:
        pickle.dump({"vocab_size": 10}, f)
    with pytest.raises(CorpusError, match="contains id 64"):
        load_corpus(tmp_path)


def test_single_token_file(tmp_path: Path) -> None:
    ids = (np.arange(1000, dtype=np.uint16) * 7) % 1000
    path = tmp_path / "tokens.bin"
    ids.tofile(path)
    corpus = load_corpus(path)
    assert (len(corpus.train), len(corpus.validation)) == (950, 50)
    np.testing.assert_array_equal(
        np.concatenate([corpus.train, corpus.validation]), ids
    )
    assert corpus.vocab_size == 1000


def test_hash_depends_on_ids_not_on_source(tmp_path: Path) -> None:
    data = _write_text(tmp_path / "corpus.txt", 500)
    np.frombuffer(data, dtype=np.uint8).astype(np.uint16).tofile(
        tmp_path / "corpus.bin"
    )
    text, tokens = (
        load_corpus(tmp_path / "corpus.txt"),
        load_corpus(tmp_path / "corpus.bin"),
    )
    assert (text.source, tokens.source) == (CorpusSource.TEXT, CorpusSource.TOKENS)
    assert text.content_hash == tokens.content_hash


def test_token_file_rejects_ids_beyond_tokenizer_vocab(tmp_path: Path) -> None:
    path = tmp_path / "tokens.bin"
    np.array([1, 2, 300, 4], dtype=np.uint16).tofile(path)
    with pytest.raises(CorpusError, match="contains id 300"):
        load_corpus(path, tokenizer=ByteTokenizer())


# --- batches --------------------------------------------------------------------------


def test_train_batch_windows_are_contiguous_and_seeded() -> None:
    train = np.arange(10_000) % 60_000
    corpus = _tiny_corpus(train, np.arange(100))
    batch = corpus.train_batch(np.random.default_rng(7), batch_size=8, seq_len=32)
    assert batch.shape == (8, 33)
    assert batch.dtype == np.int64
    # Ids equal positions, so each row must be a run of consecutive integers: targets
    # batch[:, 1:] are the inputs batch[:, :-1] shifted by one.
    np.testing.assert_array_equal(np.diff(batch, axis=1), 1)
    assert batch.min() >= 0
    assert batch.max() < len(train)
    again = corpus.train_batch(np.random.default_rng(7), batch_size=8, seq_len=32)
    np.testing.assert_array_equal(batch, again)
    other = corpus.train_batch(np.random.default_rng(8), batch_size=8, seq_len=32)
    assert not np.array_equal(batch, other)


def test_train_batch_reaches_both_ends() -> None:
    corpus = _tiny_corpus(np.arange(10), np.arange(10))
    batch = corpus.train_batch(np.random.default_rng(0), batch_size=200, seq_len=8)
    assert set(batch[:, 0].tolist()) == {0, 1}  # both valid starts, nothing beyond


def test_validation_batches_are_fixed_and_cover_the_split() -> None:
    n_ids, seq_len = 10_000, 63
    corpus = _tiny_corpus(np.arange(100), np.arange(n_ids))
    batches = corpus.validation_batches(batch_size=4, seq_len=seq_len, max_tokens=1000)
    again = corpus.validation_batches(batch_size=4, seq_len=seq_len, max_tokens=1000)
    assert len(batches) == len(again)
    for a, b in zip(batches, again, strict=True):
        np.testing.assert_array_equal(a, b)

    windows = np.concatenate(batches)
    assert all(b.dtype == np.int64 and b.shape[1] == seq_len + 1 for b in batches)
    assert all(len(b) == 4 for b in batches[:-1])
    assert 1 <= len(batches[-1]) <= 4
    assert len(windows) == 1000 // seq_len  # 15 windows, 945 predicted tokens
    assert len(windows) * seq_len <= 1000
    np.testing.assert_array_equal(np.diff(windows, axis=1), 1)
    starts = windows[:, 0]
    assert np.all(np.diff(starts) >= seq_len + 1)  # no overlap
    assert starts[0] == 0  # first id ...
    assert windows[-1, -1] == n_ids - 1  # ... to last


def test_validation_batches_budget_limits() -> None:
    corpus = _tiny_corpus(np.arange(100), np.arange(100))
    # More budget than data: every non-overlapping window, no more.
    windows = np.concatenate(corpus.validation_batches(3, seq_len=9, max_tokens=10**9))
    assert len(windows) == 10
    # Less budget than one window: still one batch of one window.
    (only,) = corpus.validation_batches(3, seq_len=9, max_tokens=1)
    assert only.shape == (1, 10)


# --- errors ---------------------------------------------------------------------------


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(
        CorpusError, match=r"nope\.txt.*does not exist.*train\.bin and val\.bin"
    ):
        load_corpus(missing)
    (tmp_path / "train.bin").write_bytes(b"\x00\x00")
    with pytest.raises(CorpusError, match=r"has no val\.bin"):
        load_corpus(tmp_path)


def test_empty_files_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "empty.bin").write_bytes(b"")
    with pytest.raises(CorpusError, match="empty"):
        load_corpus(tmp_path / "empty.bin")
    (tmp_path / "odd.bin").write_bytes(b"\x00\x00\x00")
    with pytest.raises(CorpusError, match="uint16"):
        load_corpus(tmp_path / "odd.bin")


def test_too_short_split_says_how_to_fix(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    _write_text(path, 400)
    corpus = load_corpus(path)  # 20 validation tokens
    expected = (
        "validation split has 20 tokens, need at least seq_len+1=65; "
        "use a larger file or a shorter --seq-len"
    )
    with pytest.raises(CorpusError, match=re.escape(expected)):
        corpus.validation_batches(batch_size=2, seq_len=64, max_tokens=1000)
    with pytest.raises(CorpusError, match="train split has 380 tokens"):
        corpus.train_batch(np.random.default_rng(0), batch_size=2, seq_len=500)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="validation_fraction"):
        load_corpus(validation_fraction=1.0)
    corpus = _tiny_corpus(np.arange(100), np.arange(100))
    with pytest.raises(ValueError, match="positive"):
        corpus.train_batch(np.random.default_rng(0), batch_size=0, seq_len=4)
    with pytest.raises(CorpusError, match="1-D uint16 or uint32"):
        Corpus(
            name="bad",
            source=CorpusSource.TEXT,
            content_hash="",
            vocab_size=256,
            tokenizer="bytes",
            train=np.arange(10, dtype=np.int64),
            validation=np.arange(10, dtype=np.uint16),
        )

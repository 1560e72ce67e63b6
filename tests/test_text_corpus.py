"""Text files are tokenized chunk by chunk and cached, never read whole (hptransfer.data.text,
hptransfer.data.cache): the chunked ids are the whole file's, a second load pays no
tokenizer, a changed file is tokenized again and its old entry removed, a killed writer
leaves nothing a load would read, and ``hptransfer cache`` lists and clears entries."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hptransfer.cli import main
from hptransfer.data import cache, text
from hptransfer.data.corpus import CorpusError, CorpusWarning, load_corpus
from hptransfer.data.tokenizer import ByteTokenizer, JsonTokenizer

pytest.importorskip("tokenizers")

from data_files import sample_text, train_bpe  # noqa: E402


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def sample() -> str:
    return sample_text()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, sample) -> Path:
    return train_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json", sample)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of ~256 bytes, so a test file of a few KB is many chunks (and groups)."""
    monkeypatch.setattr(text, "CHUNK_BYTES", 256)
    monkeypatch.setattr(text, "_GROUP", 3)


def test_chunks_cut_only_between_words_and_cover_the_file():
    data = b"alpha beta\ngamma\n\n  delta\nepsilon zeta\neta\n" * 40
    bounds = list(text.chunks(data, 50))
    assert bounds[0][0] == 0 and bounds[-1][1] == len(data) and len(bounds) > 5
    for (_, end), (start, _) in zip(bounds, bounds[1:], strict=False):
        assert end == start
        # the cut is right after a newline with text on both sides
        assert data[end - 1:end] == b"\n" and not data[end - 2:end - 1].isspace() \
            and not data[end:end + 1].isspace()
    assert list(text.chunks(b"one line, no newline", 4)) == [(0, 20)]


def test_chunked_ids_equal_the_whole_file_and_are_cached(tmp_path, bpe, sample, small_chunks,
                                                        monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(sample)
    tokenizer = JsonTokenizer(bpe)
    corpus = load_corpus(path, tokenizer=str(bpe))
    whole = tokenizer.encode(sample)
    np.testing.assert_array_equal(np.concatenate([corpus.train, corpus.validation]), whole)
    assert isinstance(corpus.train, np.memmap)
    (entry,) = cache.entries()
    assert entry.sources[0]["path"] == str(path.resolve()) and not entry.stale

    # a second load reads the cache: the tokenizer is not called at all
    def refuse(*args, **kwargs):
        raise AssertionError("the tokenizer ran on a cached file")

    with monkeypatch.context() as patched:
        patched.setattr(JsonTokenizer, "encode_batch", refuse)
        again = load_corpus(path, tokenizer=str(bpe))
    assert again.content_hash == corpus.content_hash

    # a changed file is another entry; the old one can never be read again and goes
    path.write_text(sample + "\nmore text at the end\n")
    changed = load_corpus(path, tokenizer=str(bpe))
    assert changed.content_hash != corpus.content_hash
    (only,) = cache.entries()
    assert only.folder != entry.folder and not entry.folder.exists()


def test_byte_level_text_in_memory_or_cached_is_the_same_corpus(tmp_path, sample,
                                                                small_chunks, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(sample)
    in_memory = load_corpus(path)
    assert not isinstance(in_memory.train, np.memmap) and cache.entries() == []
    monkeypatch.setattr(text, "IN_MEMORY_BYTES", 1024)  # as if the file were large
    cached = load_corpus(path)
    assert isinstance(cached.train, np.memmap) and len(cache.entries()) == 1
    assert cached.content_hash == in_memory.content_hash
    np.testing.assert_array_equal(cached.validation, in_memory.validation)
    np.testing.assert_array_equal(in_memory.train[:100],
                                  ByteTokenizer().encode(sample)[:100])


def test_a_tokenizer_object_from_python_is_encoded_without_a_cache(tmp_path, sample,
                                                                   small_chunks):
    class Words:  # the Tokenizer protocol, no file: nothing to key a cache by
        name, vocab_size = "words", 2

        def encode(self, text: str) -> np.ndarray:
            return np.array([len(w) % 2 for w in text.split()], dtype=np.uint16)

        def decode(self, ids) -> str:
            return " ".join("ab"[i] for i in ids)

    path = tmp_path / "corpus.txt"
    path.write_text(sample)
    corpus = load_corpus(path, tokenizer=Words())
    assert len(corpus.train) + len(corpus.validation) == len(sample.split())
    assert cache.entries() == []


def test_a_killed_writer_leaves_nothing_that_loads_and_clear_removes_it(tmp_path, bpe, sample,
                                                                       small_chunks,
                                                                       monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(sample)
    calls = []

    def dies(self, texts):  # the process is killed in the middle of the file
        calls.append(len(texts))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, texts)

    original = JsonTokenizer.encode_batch
    with monkeypatch.context() as patched, pytest.raises(KeyboardInterrupt):
        patched.setattr(JsonTokenizer, "encode_batch", dies)
        load_corpus(path, tokenizer=str(bpe))
    assert cache.entries() == []
    # a scratch folder an OS kill (no cleanup) would leave: skipped by loads, cleared later
    scratch = cache.cache_root() / ".partial-killed"
    scratch.mkdir(parents=True)
    (scratch / "ids.bin").write_bytes(b"\0" * 64)
    assert load_corpus(path, tokenizer=str(bpe)).content_hash
    assert len(cache.entries()) == 1
    cache.clear([], scratch_older_than_s=3600)
    assert scratch.exists()  # it may be a writer still at work
    old = os.stat(scratch).st_mtime - 7200
    for f in (scratch, scratch / "ids.bin"):
        os.utime(f, (old, old))
    cache.clear([], scratch_older_than_s=3600)
    assert not scratch.exists() and len(cache.entries()) == 1


def test_binary_and_non_utf8_text(tmp_path, bpe, small_chunks, monkeypatch):
    binary = tmp_path / "ids.dat"
    binary.write_bytes(b"abc\0def" * 10)
    with pytest.raises(CorpusError, match="is binary"):
        load_corpus(binary, tokenizer=str(bpe))
    assert cache.entries() == []
    latin = tmp_path / "latin.txt"
    latin.write_bytes(("word\n" * 200).encode() + "café\n".encode("latin-1"))
    for _ in range(2):  # when written, and again when read from the cache
        with pytest.warns(CorpusWarning, match="first bad byte at 1003"):
            load_corpus(latin, tokenizer=str(bpe))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    with pytest.raises(CorpusError, match="is empty"):
        load_corpus(empty)
    good = tmp_path / "good.txt"
    good.write_text("word\n" * 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # valid UTF-8: no warning, written or cached
        load_corpus(good, tokenizer=str(bpe))
        load_corpus(good, tokenizer=str(bpe))


def test_cache_list_and_clear_commands(tmp_path, bpe, sample):
    path = tmp_path / "corpus.txt"
    path.write_text(sample)
    runner = CliRunner()
    result = runner.invoke(main, ["cache", "list"])
    assert result.exit_code == 0 and "empty" in result.output
    load_corpus(path, tokenizer=str(bpe))
    result = runner.invoke(main, ["cache", "list"])
    assert result.exit_code == 0 and str(path.resolve()) in result.output
    path.write_text(sample + "changed")  # the entry is now stale
    result = runner.invoke(main, ["cache", "list"])
    assert "stale" in result.output
    result = runner.invoke(main, ["cache", "clear", "--stale"])
    assert result.exit_code == 0 and "removed 1" in result.output
    assert cache.entries() == []
    load_corpus(path, tokenizer=str(bpe))
    result = runner.invoke(main, ["cache", "clear"])
    assert result.exit_code == 0 and "removed 1" in result.output and cache.entries() == []


def test_an_unwritable_cache_is_a_clear_error(tmp_path, bpe, sample, monkeypatch):
    path = tmp_path / "corpus.txt"
    path.write_text(sample)
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "file"))  # cannot hold a cache
    with pytest.raises(CorpusError, match="cannot write the token cache.*HPTRANSFER_HOME"):
        load_corpus(path, tokenizer=str(bpe))

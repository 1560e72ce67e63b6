"""The users' own data and tokenizer (docs/data.md): token files of either width, Megatron
``.bin``/``.idx``, Parquet and Arrow tables, ``tokenizer.json``; splits that never overlap,
hashes, bits per byte; bad input refused with one clear message and nothing written. Every
file is written here (tests/data_files.py); the BPE tokenizer is trained here too."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from hptransfer.data import tokens as token_files
from hptransfer.data.corpus import CorpusError, CorpusSource, load_corpus
from hptransfer.data.source import DataSource
from hptransfer.data.tokenizer import JsonTokenizer

pytest.importorskip("tokenizers")
pytest.importorskip("pyarrow")

from data_files import (  # noqa: E402
    documents,
    sample_text,
    train_bpe,
    write_megatron,
    write_parquet,
    write_saved_dataset,
)


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    """Each test's own $HPTRANSFER_HOME, so the table cache starts empty."""
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))


@pytest.fixture(scope="module")
def text() -> str:
    return sample_text()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory, text) -> Path:
    return train_bpe(tmp_path_factory.mktemp("tok") / "tokenizer.json", text)


@pytest.fixture(scope="module")
def docs(bpe, text) -> list[np.ndarray]:
    """The sample as 40 tokenized documents."""
    tokenizer = JsonTokenizer(bpe)
    return [tokenizer.encode(d) for d in documents(text, 40)]


def _cache(tmp_path: Path) -> list[Path]:
    root = tmp_path / "home" / "cache" / "tokens"
    return sorted(root.iterdir()) if root.exists() else []


# --- tokenizer.json -------------------------------------------------------------------


def test_tokenizer_json_is_recorded_and_hashed_with_the_corpus(tmp_path, bpe, text):
    path = tmp_path / "corpus.txt"
    path.write_text(text)
    corpus = load_corpus(path, tokenizer=str(bpe))
    tokenizer = JsonTokenizer(bpe)
    assert (corpus.vocab_size, corpus.tokenizer) == (400, tokenizer.name)
    assert corpus.tokenizer_hash == tokenizer.file_hash
    ids = np.concatenate([corpus.train, corpus.validation])
    np.testing.assert_array_equal(ids, tokenizer.encode(text))
    assert ids.dtype == np.uint16  # 400 ids fit
    # bytes per validation token: the validation text's UTF-8 bytes over its tokens
    val_text = tokenizer.decode(corpus.validation)
    assert corpus.bytes_per_token == pytest.approx(len(val_text.encode()) / len(ids[-len(
        corpus.validation):]))
    assert 1.5 < corpus.bytes_per_token < 6
    assert corpus.bits_per_byte(2.0) == pytest.approx(2.0 / (corpus.bytes_per_token
                                                             * math.log(2)))
    # the same text tokenized by bytes, or by another tokenizer, is another corpus
    assert load_corpus(path).content_hash != corpus.content_hash
    other = train_bpe(tmp_path / "other.json", text, vocab_size=300)
    assert load_corpus(path, tokenizer=str(other)).content_hash != corpus.content_hash
    assert load_corpus(path, tokenizer=str(bpe)).content_hash == corpus.content_hash


@pytest.mark.parametrize("content,reason", [
    (b"{not json", "does not load as a tokenizer.json"),
    (b'{"model": {"type": "Nope"}}', "does not load as a tokenizer.json"),
])
def test_a_tokenizer_that_does_not_load_is_refused(tmp_path, text, content, reason):
    (tmp_path / "corpus.txt").write_text(text)
    (tmp_path / "bad.json").write_bytes(content)
    with pytest.raises(CorpusError, match=reason):
        load_corpus(tmp_path / "corpus.txt", tokenizer=str(tmp_path / "bad.json"))
    with pytest.raises(CorpusError, match="is not a file"):
        load_corpus(tmp_path / "corpus.txt", tokenizer=str(tmp_path / "missing.json"))


# --- flat token files of either width -------------------------------------------------


def test_uint32_ids_beyond_65535_by_flag_or_sidecar(tmp_path):
    ids = (np.arange(4000, dtype=np.uint32) * 37) % 128_256  # Llama 3's vocabulary
    ids.tofile(tmp_path / "tokens.bin")
    by_flag = load_corpus(tmp_path / "tokens.bin", token_dtype="uint32")
    assert by_flag.train.dtype.itemsize == 4 and isinstance(by_flag.train, np.memmap)
    np.testing.assert_array_equal(np.concatenate([by_flag.train, by_flag.validation]), ids)
    assert by_flag.vocab_size == int(ids.max()) + 1
    batch = by_flag.train_batch(np.random.default_rng(0), batch_size=4, seq_len=16)
    assert batch.dtype == np.int64 and batch.max() > 65_535
    assert by_flag.bytes_per_token is None and "--tokenizer" in by_flag.bytes_per_token_note

    (tmp_path / "meta.json").write_text(json.dumps({"dtype": "uint32", "vocab_size": 128_256}))
    by_sidecar = load_corpus(tmp_path / "tokens.bin")
    assert by_sidecar.vocab_size == 128_256
    assert by_sidecar.content_hash == by_flag.content_hash  # the same ids and split
    with pytest.raises(CorpusError, match="--token-dtype uint16, but .*meta.json says uint32"):
        load_corpus(tmp_path / "tokens.bin", token_dtype="uint16")


def test_a_folder_of_uint32_train_and_val(tmp_path):
    (np.arange(3000, dtype=np.uint32) % 70_000).tofile(tmp_path / "train.bin")
    (np.arange(500, dtype=np.uint32) + 69_000).tofile(tmp_path / "val.bin")
    corpus = load_corpus(DataSource(path=str(tmp_path), token_dtype="uint32"))
    assert (len(corpus.train), len(corpus.validation), corpus.vocab_size) == (3000, 500, 69_500)


def test_uint32_ids_are_not_silently_read_as_uint16(tmp_path):
    (np.arange(1000, dtype=np.uint32) % 300).tofile(tmp_path / "tokens.bin")
    with pytest.raises(CorpusError, match="looks like uint32 ids; give --token-dtype uint32"):
        load_corpus(tmp_path / "tokens.bin")
    # uint16 ids read as uint32 make absurd ids
    (np.arange(1000, dtype=np.uint16) % 50_000 + 1000).tofile(tmp_path / "u16.bin")
    with pytest.raises(CorpusError, match="another width"):
        load_corpus(tmp_path / "u16.bin", token_dtype="uint32")


def test_a_dtype_that_does_not_divide_the_file_size(tmp_path):
    (tmp_path / "tokens.bin").write_bytes(b"\x01\x00" * 101)  # 202 bytes: not uint32s
    with pytest.raises(CorpusError, match=r"202 bytes, not a whole number of uint32 ids"):
        load_corpus(tmp_path / "tokens.bin", token_dtype="uint32")


def test_an_id_beyond_the_vocabulary(tmp_path, bpe):
    (np.arange(2000, dtype=np.uint16) % 1000).tofile(tmp_path / "tokens.bin")
    (tmp_path / "meta.json").write_text('{"vocab_size": 500}')
    with pytest.raises(CorpusError, match=r"contains id 999 but the vocabulary size from "
                                          r".*meta.json is 500"):
        load_corpus(tmp_path / "tokens.bin")
    with pytest.raises(CorpusError, match="contains id 999 but the vocabulary size from "
                                          "tokenizer"):
        load_corpus(tmp_path / "tokens.bin", tokenizer=str(bpe))


def test_a_corpus_too_big_to_scan_is_hashed_by_blocks_and_checked_by_batch(
        tmp_path, monkeypatch):
    monkeypatch.setattr(token_files, "FULL_SCAN_BYTES", 1024)  # "big" from 1 KB on
    monkeypatch.setattr(token_files, "SAMPLED_BLOCKS", 4)
    monkeypatch.setattr(token_files, "_BLOCK_IDS", 16)
    ids = np.arange(20_000, dtype=np.uint16) % 600
    ids.tofile(tmp_path / "tokens.bin")
    with pytest.raises(CorpusError, match="too big to find its largest id.*vocab_size"):
        load_corpus(tmp_path / "tokens.bin")
    (tmp_path / "meta.json").write_text('{"vocab_size": 600}')
    corpus = load_corpus(tmp_path / "tokens.bin")
    assert corpus.vocab_size == 600
    changed = ids.copy()
    changed[0] = 1  # inside the first sampled block
    changed.tofile(tmp_path / "tokens.bin")
    assert load_corpus(tmp_path / "tokens.bin").content_hash != corpus.content_hash

    (tmp_path / "meta.json").write_text('{"vocab_size": 100}')  # ids up to 599 slip past
    small = load_corpus(tmp_path / "tokens.bin")
    with pytest.raises(CorpusError, match="holds id .* but its vocabulary has 100 ids"):
        for seed in range(20):
            small.train_batch(np.random.default_rng(seed), batch_size=4, seq_len=32)


# --- Megatron -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_is_read_in_place_and_split_by_document(tmp_path, docs, dtype):
    write_megatron(tmp_path / "corpus_text_document", docs, dtype=dtype)
    for name in ("corpus_text_document.bin", "corpus_text_document.idx"):
        corpus = load_corpus(tmp_path / name, validation_fraction=0.1)
        assert corpus.source is CorpusSource.MEGATRON
        assert isinstance(corpus.train, np.memmap)
        assert corpus.train.dtype.itemsize == np.dtype(dtype).itemsize
        # the last 4 of 40 documents, whole: no document in both splits
        np.testing.assert_array_equal(corpus.validation, np.concatenate(docs[-4:]))
        np.testing.assert_array_equal(corpus.train, np.concatenate(docs[:-4]))
    # the same ids as a flat uint16 file of the same split hash the same
    if dtype is np.uint16:
        flat = tmp_path / "flat"
        flat.mkdir()
        np.concatenate(docs[:-4]).astype(np.uint16).tofile(flat / "train.bin")
        np.concatenate(docs[-4:]).astype(np.uint16).tofile(flat / "val.bin")
        assert load_corpus(flat).content_hash == corpus.content_hash


def test_a_megatron_index_that_does_not_match_its_bin(tmp_path, docs):
    bin_path, idx_path = write_megatron(tmp_path / "d", docs)
    data = bin_path.read_bytes()
    bin_path.write_bytes(data[:-10])  # a truncated .bin
    with pytest.raises(CorpusError, match=r"d\.idx does not match d\.bin"):
        load_corpus(bin_path)
    bin_path.write_bytes(data)
    index = idx_path.read_bytes()
    idx_path.write_bytes(index[:-12])  # a truncated .idx
    with pytest.raises(CorpusError, match="it is truncated"):
        load_corpus(bin_path)
    idx_path.write_bytes(b"NOTMEGA!!" + index[9:])
    with pytest.raises(CorpusError, match="not an MMIDIDX index"):
        load_corpus(bin_path)
    idx_path.write_bytes(index[:17] + bytes([6]) + index[18:])  # float64 "ids"
    with pytest.raises(CorpusError, match="ids are float64"):
        load_corpus(bin_path)
    idx_path.write_bytes(index)
    with pytest.raises(CorpusError, match="says its ids are uint16; drop the flag"):
        load_corpus(bin_path, token_dtype="uint32")


# --- Parquet and Arrow ----------------------------------------------------------------


def test_parquet_ids_streamed_into_a_cache_split_by_row(tmp_path, docs):
    path = write_parquet(tmp_path / "ids.parquet",
                         {"input_ids": [d.tolist() for d in docs], "n": list(range(40))})
    corpus = load_corpus(path, validation_fraction=0.1)
    assert corpus.source is CorpusSource.TABLE and isinstance(corpus.train, np.memmap)
    np.testing.assert_array_equal(corpus.validation, np.concatenate(docs[-4:]))
    np.testing.assert_array_equal(corpus.train, np.concatenate(docs[:-4]))
    assert corpus.vocab_size == max(int(d.max()) for d in docs) + 1
    (cached,) = _cache(tmp_path)
    again = load_corpus(path, validation_fraction=0.1)  # read from the cache
    assert again.content_hash == corpus.content_hash and _cache(tmp_path) == [cached]
    # a folder saved by datasets (Arrow streams) with the same rows is the same corpus
    saved = write_saved_dataset(tmp_path / "saved", {"input_ids": [d.tolist() for d in docs]})
    assert load_corpus(saved, validation_fraction=0.1).content_hash == corpus.content_hash
    # and so is a folder of Parquet files
    folder = tmp_path / "parts"
    folder.mkdir()
    write_parquet(folder / "a.parquet", {"input_ids": [d.tolist() for d in docs[:25]]})
    write_parquet(folder / "b.parquet", {"input_ids": [d.tolist() for d in docs[25:]]})
    assert load_corpus(folder, validation_fraction=0.1).content_hash == corpus.content_hash


def test_parquet_text_with_a_tokenizer(tmp_path, bpe, text, docs):
    texts = documents(text, 40)
    path = write_parquet(tmp_path / "text.parquet", {"text": texts, "id": list(range(40))})
    corpus = load_corpus(path, tokenizer=str(bpe), validation_fraction=0.1)
    np.testing.assert_array_equal(corpus.validation, np.concatenate(docs[-4:]))
    # bytes per token measured exactly on the validation rows' text
    assert corpus.bytes_per_token == pytest.approx(
        sum(len(t.encode()) for t in texts[-4:]) / len(corpus.validation))
    assert corpus.tokenizer_hash == JsonTokenizer(bpe).file_hash
    saved = write_saved_dataset(tmp_path / "saved", {"text": texts})
    assert (load_corpus(DataSource(path=str(saved), tokenizer=str(bpe)),
                        validation_fraction=0.1).content_hash == corpus.content_hash)


def test_bad_tables_are_refused_and_nothing_is_cached(tmp_path, docs, bpe):
    ids = write_parquet(tmp_path / "ids.parquet", {"input_ids": [d.tolist() for d in docs]})
    with pytest.raises(CorpusError, match="has no column 'tokens'.*columns are input_ids"):
        load_corpus(ids, column="tokens")
    text = write_parquet(tmp_path / "text.parquet", {"body": ["a b c"] * 10})
    with pytest.raises(CorpusError, match="none of the columns.*--data-column"):
        load_corpus(text)
    with pytest.raises(CorpusError, match="is text: give the --tokenizer"):
        load_corpus(text, column="body")
    numbers = write_parquet(tmp_path / "numbers.parquet", {"x": [1.5] * 10})
    with pytest.raises(CorpusError, match="column 'x' .* is double"):
        load_corpus(numbers, column="x")
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(ids.read_bytes()[:200])
    with pytest.raises(CorpusError, match="does not read as Parquet"):
        load_corpus(truncated)
    (tmp_path / "t.txt").write_text("hello world " * 100)
    with pytest.raises(CorpusError, match="--data-column 'x' names a column"):
        load_corpus(tmp_path / "t.txt", column="x")
    assert _cache(tmp_path) == []


# --- the command line: tune, predict, confirm on each format ---------------------------

TINY = ["--depth", "1", "--seq-len", "32", "--base-width", "32", "--head-dim", "16"]


def _invoke(args: list[str], code: int = 0):
    from click.testing import CliRunner

    from hptransfer.cli import main

    result = CliRunner().invoke(main, args)
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result


def _write_format(kind: str, folder: Path, docs, text: str) -> list[str]:
    """The ``--data …`` flags of the sample in format ``kind``, written under ``folder``."""
    ids = np.concatenate(docs)
    if kind == "uint16.bin":
        ids.astype(np.uint16).tofile(folder / "tokens.bin")
        return ["--data", str(folder / "tokens.bin")]
    if kind == "uint32.bin":
        ids.astype(np.uint32).tofile(folder / "tokens.bin")
        return ["--data", str(folder / "tokens.bin"), "--token-dtype", "uint32"]
    if kind == "megatron":
        write_megatron(folder / "corpus_text_document", docs)
        return ["--data", str(folder / "corpus_text_document.bin")]
    if kind == "parquet-ids":
        write_parquet(folder / "ids.parquet", {"input_ids": [d.tolist() for d in docs]})
        return ["--data", str(folder / "ids.parquet"), "--data-column", "input_ids"]
    write_parquet(folder / "text.parquet", {"text": documents(text, 40)})
    return ["--data", str(folder / "text.parquet")]


# with a tokenizer the runs also give bits per byte; without, None (and why)
FORMATS = {"uint16.bin": False, "uint32.bin": True, "megatron": False, "parquet-ids": True,
           "parquet-text": True}


# a few seconds each: uint32 ids and Parquet text in the default run, every format in the
# slow job
@pytest.mark.parametrize("kind", [
    pytest.param(kind, marks=() if kind in ("uint32.bin", "parquet-text") else pytest.mark.slow)
    for kind in FORMATS])
def test_tune_predict_confirm_on_each_format(tmp_path, kind, docs, text, bpe):
    from hptransfer.study.attributes import load_config

    data = _write_format(kind, tmp_path, docs, text)
    data += ["--tokenizer", str(bpe)] if FORMATS[kind] else []
    storage = str(tmp_path / "s.db")
    _invoke(["tune", "--widths", "32,64", "--trials", "3", "--steps", "4", "--lr-range",
             "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off", *TINY, *data,
             "--storage", storage, "--study", "mine", "--threads", "1", "--workers", "1"])
    config = load_config("mine", storage)
    assert config.data.path == str(Path(data[1]).resolve())
    assert config.spec.vocab >= config.corpus.vocab_size >= 300
    if FORMATS[kind]:
        assert config.data.tokenizer == str(bpe.resolve())
        assert config.corpus.tokenizer_hash == JsonTokenizer(bpe).file_hash
        assert config.corpus.bytes_per_token > 1
    else:
        assert config.corpus.bytes_per_token is None and config.corpus.tokenizer == "unknown"

    prediction = json.loads(_invoke(["predict", "--study", "mine", "--storage", storage,
                                     "--target-width", "128", "--json"]).output)
    assert prediction["spec"]["width"] == 128
    if kind == "parquet-text":  # the proxies' own tokenizer at the target: nothing to judge;
        # another one of the same size: refused (only the same tokenizer was measured)
        predict = ["predict", "--study", "mine", "--storage", storage, "--target-width",
                   "128", "--json", "--target-tokenizer"]
        same = json.loads(_invoke([*predict, str(bpe)]).output)
        assert (same["hparams"], same["warnings"]) == (prediction["hparams"],
                                                        prediction["warnings"])
        other = train_bpe(tmp_path / "other.json", text[::-1], vocab_size=400)
        refused = _invoke([*predict, str(other)], code=2)
        assert "is not the proxies'" in refused.output
    result = _invoke(["confirm", "--study", "mine", "--storage", storage, "--target-width",
                      "64", "--offsets", "-1,0,1", "--threads", "1", "--json"])
    runs = json.loads(result.output)["runs"]
    assert [r["status"] for r in runs] == ["complete"] * 3
    for run in runs:
        expected = config.corpus.bits_per_byte(run["loss"])
        assert run["bits_per_byte"] == (None if expected is None else pytest.approx(expected))
    if kind == "parquet-text":  # the report and the table printed show bits per byte too
        shown = _invoke(["confirm", "--study", "mine", "--storage", storage, "--target-width",
                         "64", "--offsets", "-1,0,1", "--threads", "1"]).output
        assert "bits/byte" in shown and f"{runs[0]['bits_per_byte']:.4f}" in shown
        _invoke(["report", "--study", "mine", "--storage", storage, "--out",
                 str(tmp_path / "reports")])
        markdown = (tmp_path / "reports" / "mine_report.md").read_text()
        assert "bits/byte" in markdown and f"{runs[0]['bits_per_byte']:.4f}" in markdown


def test_train_records_bits_per_byte(tmp_path, text, bpe):
    (tmp_path / "corpus.txt").write_text(text)
    out = tmp_path / "run.json"
    shown = _invoke(["train", "--width", "32", *TINY, "--steps", "3", "--batch-size", "4",
                     "--data", str(tmp_path / "corpus.txt"), "--tokenizer", str(bpe),
                     "--threads", "1", "--out", str(out)]).output
    record = json.loads(out.read_text())
    assert record["spec"]["vocab"] == 400 and record["corpus"]["tokenizer_hash"]
    per_token = record["corpus"]["bytes_per_token"]
    assert record["final_val_bpb"] == pytest.approx(
        record["final_val_loss"] / (per_token * math.log(2)))
    assert "bits/byte" in shown


def _bad_inputs(folder: Path, docs, text: str, bpe: Path) -> dict[str, tuple[list[str], str]]:
    """Each bad input's flags and the message it must exit 2 with."""
    (folder / "odd.bin").write_bytes(b"\x01\x00" * 101)
    big = folder / "big"
    big.mkdir()
    (np.arange(2000, dtype=np.uint16) % 1000).tofile(big / "tokens.bin")
    (big / "meta.json").write_text('{"vocab_size": 500}')
    bin_path, _ = write_megatron(folder / "meg", docs)
    bin_path.write_bytes(bin_path.read_bytes()[:-6])
    write_parquet(folder / "ids.parquet", {"input_ids": [d.tolist() for d in docs]})
    (folder / "truncated.parquet").write_bytes((folder / "ids.parquet").read_bytes()[:300])
    (folder / "corpus.txt").write_text(text)
    (folder / "broken.json").write_text('{"model": 1}')
    return {
        "id beyond the vocabulary": (["--data", str(big / "tokens.bin")],
                                     "contains id 999 but the vocabulary size from"),
        ".idx not matching its .bin": (["--data", str(bin_path)], "meg.idx does not match"),
        "truncated file": (["--data", str(folder / "truncated.parquet")],
                           "does not read as Parquet"),
        "missing column": (["--data", str(folder / "ids.parquet"), "--data-column", "text"],
                           "has no column 'text'"),
        "dtype not dividing the size": (["--data", str(folder / "odd.bin"), "--token-dtype",
                                         "uint32"], "not a whole number of uint32 ids"),
        "tokenizer that does not load": (["--data", str(folder / "corpus.txt"), "--tokenizer",
                                          str(folder / "broken.json")],
                                         "does not load as a tokenizer.json"),
    }


def test_bad_data_exits_2_with_one_message_and_writes_nothing(tmp_path, docs, text, bpe):
    data = tmp_path / "data"
    data.mkdir()
    for name, (flags, message) in _bad_inputs(data, docs, text, bpe).items():
        storage = tmp_path / "s.db"
        for command in (["tune", "--widths", "32", "--trials", "2", "--steps", "2", *TINY,
                         "--storage", str(storage), "--study", "bad", "--threads", "1"],
                        ["train", "--width", "32", *TINY, "--steps", "2", "--threads", "1",
                         "--out", str(tmp_path / "run.json")]):
            output = _invoke([*command, *flags], code=2).output
            assert message in output, f"{name}: {output}"
            assert output.count("error") == 1, f"{name}: {output}"
        assert not storage.exists() and not (tmp_path / "run.json").exists(), name
        assert _cache(tmp_path) == [], name


# ---- memory: a memory-mapped file's pages do not pile up in RSS ------------------------------

def _rss_file_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("RssFile:")[1].split()[0]) / 1024


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="Linux /proc only")
def test_released_file_pages_leave_the_process(tmp_path):
    """What the hash of a big token file and the training windows map is unmapped again
    (tokens.release): the process's RSS holds what it owns, not the file."""
    path = tmp_path / "ids.bin"
    np.arange(1 << 24, dtype=np.uint32).tofile(path)  # 64 MB
    ids = token_files.memmap_ids(path, token_files.TokenDType.UINT32, given_by="the test")
    before = _rss_file_mb()
    assert int(ids[::1024].astype(np.int64).sum()) > 0  # one id per page: every page mapped
    touched = _rss_file_mb()
    token_files.release(ids[10:], np.zeros(3, dtype=np.uint32))  # a slice shares the map
    after = _rss_file_mb()
    assert touched - before > 32 and after - before < 8, (before, touched, after)
    assert int(ids[123_456]) == 123_456  # still readable


def test_training_windows_release_the_file_every_so_often(tmp_path, monkeypatch):
    from hptransfer.data import corpus as corpus_module

    path = tmp_path / "ids.bin"
    (np.arange(100_000, dtype=np.uint32) % 500).tofile(path)
    corpus = load_corpus(DataSource(path=str(path), token_dtype="uint32"))
    released = []
    monkeypatch.setattr(corpus_module, "_RELEASE_WINDOWS", 10)
    monkeypatch.setattr(token_files, "release", lambda *a: released.append(len(a)))
    rng = np.random.default_rng(0)
    for _ in range(7):
        corpus.train_batch(rng, 4, 16)
    assert len(released) == 2  # after 12 and 24 windows

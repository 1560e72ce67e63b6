"""Small data files in every format hptransfer reads, written by the tests themselves:
a text sample, a BPE ``tokenizer.json`` trained on it (``tokenizers``; nothing downloaded),
flat token files, a Megatron ``.bin``/``.idx`` pair, Parquet and Arrow tables."""

from __future__ import annotations

import json
import struct
import sysconfig
from pathlib import Path

import numpy as np

from hptransfer.data.megatron import MAGIC


def sample_text(n_bytes: int = 120_000) -> str:
    """Real text (the standard library's json and email packages), the same on every run of
    one Python version."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted([*(root / "json").glob("*.py"), *(root / "email").glob("*.py")]):
        text = path.read_text(encoding="utf-8")
        parts.append(text)
        size += len(text.encode())
        if size >= n_bytes:
            break
    return "".join(parts)[:n_bytes]


def documents(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` documents of about equal length."""
    cuts = np.linspace(0, len(text), n + 1).astype(int)
    return [text[a:b] for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def train_bpe(path: Path, text: str, vocab_size: int = 400) -> Path:
    """A byte-level BPE ``tokenizer.json`` trained on ``text``, written to ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(documents(text, 20), trainer=trainer)
    tokenizer.save(str(path))
    return path


# Megatron's dtype codes (hptransfer.data.megatron's docstring)
MEGATRON_CODES = {np.dtype(np.uint16): 8, np.dtype(np.int32): 4, np.dtype(np.int16): 3,
                  np.dtype(np.int64): 5}


def write_megatron(prefix: Path, docs: list[np.ndarray], dtype=np.uint16) -> tuple[Path, Path]:
    """``prefix.bin`` and ``prefix.idx`` holding ``docs``, one sequence per document."""
    dtype = np.dtype(dtype)
    bin_path, idx_path = Path(f"{prefix}.bin"), Path(f"{prefix}.idx")
    sizes = np.array([len(d) for d in docs], dtype="<i4")
    pointers = np.concatenate([[0], np.cumsum(sizes[:-1], dtype=np.int64)]) * dtype.itemsize
    with bin_path.open("wb") as f:
        for doc in docs:
            f.write(np.asarray(doc, dtype=dtype.newbyteorder("<")).tobytes())
    with idx_path.open("wb") as f:
        f.write(MAGIC)
        f.write(struct.pack("<Q", 1))
        f.write(struct.pack("<B", MEGATRON_CODES[dtype]))
        f.write(struct.pack("<Q", len(docs)))
        f.write(struct.pack("<Q", len(docs) + 1))
        f.write(sizes.tobytes())
        f.write(pointers.astype("<i8").tobytes())
        f.write(np.arange(len(docs) + 1, dtype="<i8").tobytes())
    return bin_path, idx_path


def write_parquet(path: Path, columns: dict[str, list]) -> Path:
    """A Parquet file of ``columns`` (lists of id lists, or of strings), small row groups
    so that reading streams several."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path, row_group_size=7)
    return path


def write_saved_dataset(folder: Path, columns: dict[str, list]) -> Path:
    """A folder laid out as ``datasets.Dataset.save_to_disk`` writes it: Arrow IPC stream
    files listed by ``state.json``."""
    import pyarrow as pa

    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(columns)
    half = table.num_rows // 2
    names = []
    for i, part in enumerate((table.slice(0, half), table.slice(half))):
        name = f"data-{i:05d}-of-00002.arrow"
        with pa.OSFile(str(folder / name), "wb") as sink, \
                pa.ipc.new_stream(sink, part.schema) as writer:
            for batch in part.to_batches(max_chunksize=5):
                writer.write_batch(batch)
        names.append(name)
    (folder / "state.json").write_text(json.dumps(
        {"_data_files": [{"filename": n} for n in names], "_fingerprint": "test"}))
    (folder / "dataset_info.json").write_text("{}")
    return folder

"""The built-in corpus as a text file, and BPE tokenizers trained on it: the data of the
vocabulary measurement (docs/transfer.md, "A different vocabulary at the target").

The built-in corpus is byte-tokenized by design; to measure what a 8k or 32k BPE
vocabulary does to the transfer on the *same text*, this writes that text out (its training
files first, then its validation files, so a text file's last 5 % is about the built-in
validation split) and trains byte-level BPE tokenizers on the training part only (the
validation text is never seen by the tokenizer). Nothing is downloaded.

    python benchmarks/bpe_corpus.py --out /tmp/bpe --vocab 8192 --vocab 32768

writes ``/tmp/bpe/builtin.txt`` and ``/tmp/bpe/bpe8192/tokenizer.json``, … and prints the
hashes; then tune with ``--data /tmp/bpe/builtin.txt --tokenizer /tmp/bpe/bpe8192/tokenizer.json``
(or ``benchmarks/transfer.py --data … --tokenizer …``).
"""

from __future__ import annotations

import argparse
import hashlib
import sysconfig
from pathlib import Path


def export_builtin_text(out: Path) -> tuple[Path, Path]:
    """Write the built-in corpus as text: ``builtin.txt`` (all of it, training files first)
    and ``builtin-train.txt`` (the training files only, for the tokenizer)."""
    from hptransfer.data.corpus import _builtin_corpus

    corpus = _builtin_corpus(sysconfig.get_paths()["stdlib"])
    train = bytes(corpus.train.astype("uint8"))
    validation = bytes(corpus.validation.astype("uint8"))
    out.mkdir(parents=True, exist_ok=True)
    whole, train_only = out / "builtin.txt", out / "builtin-train.txt"
    whole.write_bytes(train + validation)
    train_only.write_bytes(train)
    return whole, train_only


def train_bpe(text: Path, vocab: int, out: Path) -> Path:
    """A byte-level BPE ``tokenizer.json`` (GPT-2's scheme: every byte is a token, so no
    text is unknown) of ``vocab`` tokens trained on ``text``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    lines = text.read_bytes().decode("utf-8", "replace").splitlines(keepends=True)
    tokenizer.train_from_iterator(lines, trainer=trainer)
    folder = out / f"bpe{vocab}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    path.write_text(tokenizer.to_str())
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder to write into")
    parser.add_argument("--vocab", type=int, action="append", default=[],
                        help="a BPE vocabulary size to train (repeatable)")
    args = parser.parse_args()
    whole, train_only = export_builtin_text(args.out)
    print(f"{whole}: {whole.stat().st_size:,} bytes, sha256:"
          f"{hashlib.sha256(whole.read_bytes()).hexdigest()[:16]}")
    for vocab in args.vocab:
        path = train_bpe(train_only, vocab, args.out)
        print(f"{path}: vocab {vocab}, sha256:{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}")


if __name__ == "__main__":
    main()

"""Token data: corpora (the built-in one, text files, nanoGPT ``.bin`` files) and tokenizers.
NumPy only: batches are int64 arrays that the training loop moves to torch."""

from hptransfer.data.corpus import Corpus, CorpusSource, check_hash, load_corpus
from hptransfer.data.tokenizer import ByteTokenizer, Tokenizer

__all__ = ["ByteTokenizer", "Corpus", "CorpusSource", "Tokenizer", "check_hash",
           "load_corpus"]

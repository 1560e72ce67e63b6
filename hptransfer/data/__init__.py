"""Token data: corpora (the built-in one, text files, token files of any width, Megatron
``.bin``/``.idx``, Parquet and Arrow tables) and tokenizers (bytes, ``tokenizer.json``).
NumPy only (pyarrow and tokenizers when those formats are used): batches are int64 arrays
that the training loop moves to torch."""

from hptransfer.data.corpus import Corpus, CorpusSource, check_hash, load_corpus
from hptransfer.data.source import CorpusRecord, DataSource
from hptransfer.data.tokenizer import ByteTokenizer, JsonTokenizer, Tokenizer
from hptransfer.data.tokens import TokenDType

__all__ = ["ByteTokenizer", "Corpus", "CorpusRecord", "CorpusSource", "DataSource",
           "JsonTokenizer", "TokenDType", "Tokenizer", "check_hash", "load_corpus"]

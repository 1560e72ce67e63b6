"""A run sent by value to the processes that train it: Ray Train workers, torchrun ranks.

A :class:`RunOrder` holds :func:`hptransfer.training.loop.train`'s inputs, except the corpus,
which travels by *path*: each process loads it and checks its content hash
(:func:`~hptransfer.data.corpus.check_hash`), so every node must see the same data at the
same path. It is JSON (``model_dump_json``), never pickled.
"""

from __future__ import annotations

from pydantic import Field

from hptransfer.budget import Budget
from hptransfer.data.source import DataSource
from hptransfer.hparams import HParams
from hptransfer.record import RunRecord
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.training.execution import Execution

__all__ = ["RunOrder"]


class RunOrder(FrozenConfig):
    """What one run trains and how (module docstring)."""

    spec: ModelSpec
    hparams: HParams
    budget: Budget
    seed: int = 0
    data: DataSource | None = Field(None, description="corpus every process can read (paths "
                                                      "and tokenizer); None: the built-in "
                                                      "corpus")
    corpus_hash: str = Field(description="content hash the processes' corpus must have")
    execution: Execution = Execution()

    def train(self, *, threads: int | None = None, device: str | None = None,
              on_eval=None) -> RunRecord:
        """Load and check the corpus, then train this run in this process (one rank)."""
        from hptransfer.data.corpus import check_hash, load_corpus
        from hptransfer.training.loop import train

        corpus = load_corpus(self.data)
        check_hash(corpus, self.corpus_hash)
        return train(self.spec, self.hparams, self.budget, corpus, seed=self.seed,
                     on_eval=on_eval, threads=threads, device=device, execution=self.execution)

"""How one run executes, beyond what it trains: sharding, compilation, checkpoints.

An :class:`Execution` is the same on every rank of a run (it travels by value to Ray Train
workers and torchrun ranks); which device a rank computes on is the launcher's business and
is passed to :func:`hptransfer.training.loop.train` separately. None of these options changes
*what* is trained: a sharded, compiled or resumed run trains the same model on the same
batches with the same per-tensor LRs, so its losses match the plain run's up to float
rounding (tests/test_distributed.py, tests/test_checkpoint.py).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, model_validator

from hptransfer.spec import Compilation, FrozenConfig

__all__ = ["Checkpointing", "Compilation", "Execution", "Sharding"]


class Sharding(str, Enum):
    """How data-parallel ranks hold the model (with one rank both are the plain model)."""

    REPLICATE = "replicate"  # DDP: every rank holds all weights, gradients, optimizer state
    FSDP = "fsdp"  # FSDP2 fully_shard: each rank holds 1/N of them (a target too big for one card)


class Checkpointing(FrozenConfig):
    """When a run saves a checkpoint it can resume from after a kill or preemption.

    A checkpoint is saved after a step when ``every_steps`` steps or ``every_minutes``
    minutes have passed since the last one (whichever comes first; either may be None).
    It is the folder ``folder/<fingerprint of the run>/step-N``, every rank's shards in it
    (:mod:`hptransfer.training.checkpoint`): a rerun of the same run (same spec, hparams,
    budget, seed, corpus, and the same ``owner``: storage and study) finds it, on any number
    of ranks, and any other run cannot.
    """

    folder: Path = Field(description="where checkpoints are written; on a multi-node job a "
                                     "folder every rank of every attempt can reach (a shared "
                                     "file system): each rank writes its own shards")
    every_steps: int | None = Field(None, gt=0, description="save after this many steps")
    every_minutes: float | None = Field(10.0, gt=0, description="save after this many minutes")
    keep: bool = Field(False, description="keep the checkpoint after the run finished (else "
                                          "it is deleted once the run's record exists)")
    owner: str = Field("", description="the record the run belongs to (its storage and "
                                       "study): part of the file's fingerprint, so that a run "
                                       "recorded elsewhere never resumes from it")

    @model_validator(mode="after")
    def _some_interval(self) -> Checkpointing:
        if self.every_steps is None and self.every_minutes is None:
            raise ValueError("give every_steps or every_minutes (or both): with neither, no "
                             "checkpoint would ever be saved")
        return self


class Execution(FrozenConfig):
    """Sharding, compilation and checkpoints of one run (module docstring)."""

    sharding: Sharding = Sharding.REPLICATE
    compilation: Compilation = Compilation.EAGER
    checkpoint: Checkpointing | None = Field(None, description="None: no checkpoints")

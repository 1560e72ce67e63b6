"""One training run: the loop (:mod:`~hptransfer.training.loop`), its optimizer and schedule,
the device and threads it computes with, data-parallel ranks, how it executes (sharding,
compilation, checkpoints: :mod:`~hptransfer.training.execution`) and its checkpoints.
Nothing here imports Optuna or Ray.

The loop's names are exported lazily: the command line imports
:mod:`hptransfer.training.execution` (plain configs) without loading torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hptransfer.training.loop import EvalCallback, evaluate, train

__all__ = ["EvalCallback", "evaluate", "train"]


def __getattr__(name: str):
    if name in __all__:
        from hptransfer.training import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""One training run: the loop (:mod:`~hptransfer.training.loop`), its optimizer and schedule,
the device and threads it computes with, and data-parallel ranks. Nothing here imports
Optuna or Ray."""

from hptransfer.training.loop import EvalCallback, evaluate, train

__all__ = ["EvalCallback", "evaluate", "train"]

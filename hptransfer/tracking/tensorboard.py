"""TensorBoard, through ``torch.utils.tensorboard`` (PyTorch's writer of TensorBoard event
files; it needs the ``tensorboard`` package): one run folder per training run,
``runs/STUDY/RUN`` under the tracking folder, so ``tensorboard --logdir runs`` shows a
study's runs together.

Scalars are the curves and the summary values (``summary/…``); the parameters are a run's
HParams-plugin summary (the HPARAMS tab) and JSON text, and the status, the reason and a
verdict are text (the TEXT tab).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from hptransfer.tracking.tracker import Param

__all__ = ["TensorBoardTracker"]


class TensorBoardTracker:
    def __init__(self, folder: Path) -> None:
        self.root = folder / "runs"

    def check(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)  # a folder it cannot write says so now

    def start(self, group: str, name: str, slug: str, params: Mapping[str, Param]
              ) -> TensorBoardRun:
        writer = SummaryWriter(log_dir=str(self.root / group / slug))
        writer.add_text("name", name)
        writer.add_text("params", json.dumps(dict(params)))
        return TensorBoardRun(writer, dict(params))


class TensorBoardRun:
    def __init__(self, writer: SummaryWriter, params: dict[str, Param]) -> None:
        self.writer, self.params = writer, params

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # a live curve: readers see each point as it comes

    def finish(self, status: str, summary: Mapping[str, Param]) -> None:
        numbers = {k: float(v) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for key, value in numbers.items():
            self.writer.add_scalar(f"summary/{key}", value)
        for key, text in {**summary, "status": status}.items():  # status, reason, verdict
            if isinstance(text, str):
                self.writer.add_text(key, text)
        # the HParams tab: this run's parameters against its final values, in its own folder
        # (SummaryWriter.add_hparams would open a folder of its own beside it)
        experiment, start, end = hparams(self.params, {f"summary/{k}": v
                                                       for k, v in numbers.items()})
        for event in (experiment, start, end):
            self.writer.file_writer.add_summary(event)
        self.writer.close()

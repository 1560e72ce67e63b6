"""Weights & Biases, through its own client: one W&B run per training run, the study as its
group, in the project ``$WANDB_PROJECT`` (default ``hptransfer``).

Online or offline is W&B's own setting (``WANDB_MODE=offline``, or ``wandb offline``):
offline, each run is a folder ``wandb/offline-run-*`` under the tracking folder, uploaded
later with ``wandb sync``. Online without credentials, W&B would stop to ask for an API key
at a terminal; :meth:`WandbTracker.check` turns the tracker off instead (one warning).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import wandb

from hptransfer.tracking.tracker import Param

__all__ = ["WandbTracker"]

PROJECT = "hptransfer"


def _settings() -> wandb.Settings:
    # console="off": W&B would otherwise wrap stdout, and `--json` output must stay hptransfer's
    # own; no system metrics: a sampling thread per run costs CPU the proxies need
    return wandb.Settings(console="off", silent=True, x_disable_stats=True,
                          x_disable_machine_info=True)


class WandbTracker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def check(self) -> None:
        if wandb.setup().settings.mode in ("offline", "dryrun", "disabled"):
            return
        if not wandb.login(prompt=False, verify=False):
            raise RuntimeError("W&B has no API key here: run `wandb login`, set "
                               "WANDB_API_KEY, or log offline with WANDB_MODE=offline")

    def start(self, group: str, name: str, slug: str, params: Mapping[str, Param]
              ) -> WandbRun:
        self.folder.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=os.environ.get("WANDB_PROJECT") or PROJECT, group=group,
                         name=name, config=dict(params), dir=str(self.folder),
                         job_type=str(params.get("role", "trial")), reinit="create_new",
                         settings=_settings())
        # every metric against the optimizer step: the training curve arrives after the
        # validation points (W&B's own step must only grow, so it is left to count logs)
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return WandbRun(run)


class WandbRun:
    def __init__(self, run) -> None:
        self.run = run

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        self.run.log({**metrics, "step": step})

    def finish(self, status: str, summary: Mapping[str, Param]) -> None:
        self.run.summary.update({**summary, "status": status})
        # a run that ended in an error is W&B's "failed"; the rest ended as planned
        self.run.finish(exit_code=1 if status == "error" else 0)

"""MLflow, through its own client (``MlflowClient``): one MLflow run per training run, in
the experiment named after the study.

Where: ``MLFLOW_TRACKING_URI`` when it is set (a server, a database, ``file:`` store),
else a SQLite store ``mlflow.db`` in the tracking folder (MLflow 3 keeps its ``./mlruns``
file store only behind ``MLFLOW_ALLOW_FILE_STORE=true``). Its HTTP timeouts and retries are
MLflow's own settings (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from mlflow.entities import Metric, RunTag
from mlflow.entities import Param as MlflowParam
from mlflow.tracking import MlflowClient

from hptransfer.tracking.tracker import Param

__all__ = ["MlflowTracker"]

# a status's MLflow run status: a diverged or pruned run ended as planned; an error failed;
# a lost run was stopped and is retried as another trial
_RUN_STATUS = {"error": "FAILED", "lost": "KILLED"}


class MlflowTracker:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{folder / 'mlflow.db'}"

    def _client(self) -> MlflowClient:
        if self.uri.startswith("sqlite:///"):
            self.folder.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.uri)

    def check(self) -> None:
        self._client().search_experiments(max_results=1)  # reaches the server or store

    def start(self, group: str, name: str, slug: str, params: Mapping[str, Param]
              ) -> MlflowRun:
        client = self._client()
        experiment = client.get_experiment_by_name(group)
        experiment_id = (experiment.experiment_id if experiment is not None
                         else _create(client, group))
        run = client.create_run(experiment_id, run_name=name, tags={"hptransfer.slug": slug})
        client.log_batch(run.info.run_id, params=[MlflowParam(k, str(v))
                                                  for k, v in params.items()])
        return MlflowRun(client, run.info.run_id)


def _create(client: MlflowClient, name: str) -> str:
    """Create the experiment; another process may have created it a moment ago."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name)
    except MlflowException:
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


class MlflowRun:
    def __init__(self, client: MlflowClient, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        import time

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step)
                                                    for k, v in metrics.items()])

    def finish(self, status: str, summary: Mapping[str, Param]) -> None:
        import time

        now = int(time.time() * 1000)
        numbers = [Metric(k, float(v), now, 0) for k, v in summary.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)]
        tags = [RunTag(f"hptransfer.{k}", v) for k, v in {**summary, "status": status}.items()
                if isinstance(v, str)]
        self.client.log_batch(self.run_id, metrics=numbers, tags=tags)
        self.client.set_terminated(self.run_id, _RUN_STATUS.get(status, "FINISHED"))

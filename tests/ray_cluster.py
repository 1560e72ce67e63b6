"""A real Ray cluster for tests: one head node, private to this test session.

Started by ``ray.init`` in the test process (GCS, raylet, workers, and the dashboard for
the Jobs API on 127.0.0.1). Ray binds its GCS to the machine's own address rather than
loopback on purpose; on the reference machine that network reaches nothing outside it.
Other processes (the ``hptransfer`` console script, a submitted job) join the cluster by
its address, and ``ray.shutdown`` stops exactly this cluster (``ray stop`` would also kill
any other session's cluster on the machine). Skipped, with the install line, where Ray is
not installed.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class RayCluster:
    address: str  # GCS address, HOST:PORT, for `--address` and RAY_ADDRESS
    dashboard_url: str  # http://HOST:PORT, for the Jobs API


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    ray = pytest.importorskip("ray", reason='Ray is not installed: pip install "hptransfer[ray]"')
    if ray.is_initialized():
        ray.shutdown()
    port = _free_port()
    context = ray.init(address="local", num_cpus=2,
                       include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=port,
                       logging_level="WARNING", runtime_env={"env_vars": {
                           "HPTRANSFER_THREADS": "1"}})
    try:
        yield RayCluster(address=context.address_info["gcs_address"],
                         dashboard_url=f"http://127.0.0.1:{port}")
    finally:
        ray.shutdown()

"""Where work runs besides this process: a Ray cluster (or, for confirmation runs, the ranks
of a torchrun job: :mod:`hptransfer.confirmation.torchrun`).

- :mod:`~hptransfer.backends.ray_tune`: :class:`RayTune`, a tune's
  :class:`~hptransfer.study.tune.TrialRunner` on Ray Tune;
- :mod:`~hptransfer.backends.ray_train`: one run as a Ray Train data-parallel job (what a
  confirmation run on Ray is);
- :mod:`~hptransfer.backends.cluster`: connecting, and the storage a cluster can share.

Ray is an optional extra (``pip install "hptransfer[ray]"``), imported only inside the
functions that need it: importing these modules needs no Ray.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["Backend"]


class Backend(str, Enum):
    """Where trials and confirmation runs execute."""

    LOCAL = "local"  # processes on this machine (hptransfer's own workers)
    RAY = "ray"  # a Ray cluster: Ray Tune trials, Ray Train confirmation runs
    # the ranks of a torchrun job train each confirmation run together (Slurm, Kubernetes
    # without Ray); tune trials are independent runs and do not use it
    TORCHRUN = "torchrun"

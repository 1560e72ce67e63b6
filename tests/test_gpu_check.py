"""benchmarks/gpu_check.sh's CPU dry run: every step of the GPU check runs and passes at toy
sizes on the CPU (2 gloo ranks for FSDP2, a real SIGKILL and resume), so the script a lent
GPU machine runs once is known to work before it gets there.

The compiled step is left out (``SKIP=compiled``): torch.compile's first C++ build of the
step costs about 45 s on the 2-core reference machine. So are Ray's (``SKIP=ray``: the tune
runs locally, ray-train is skipped): starting Ray twice costs about 2 minutes there, and
tests/test_ray_train.py covers Ray Train. The tune step is skipped too, so that its fallback
runs instead: tune-local, which tunes the study without Ray when the tune failed (on the
lent H200 a step time limit cut a Ray tune short, and every step after it lost its study).
``HPTRANSFER_GPU_CHECK=all`` runs every step (about 5 minutes there; every step passed).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_s_cpu_dry_run_passes_every_step(tmp_path):
    every = os.environ.get("HPTRANSFER_GPU_CHECK") == "all"
    skip = "" if every else "tune compiled ray"
    if every and importlib.util.find_spec("ray") is None:
        skip = "ray"
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(tmp_path), "PYTHON": sys.executable,
           "SKIP": skip, "HPTRANSFER_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT),
                                                       os.environ.get("PYTHONPATH"))))}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    summary = (tmp_path / "summary.tsv").read_text().splitlines()
    rows = {line.split("\t")[0]: line.split("\t") for line in summary[1:]}
    fallback = ["tune-local"] if "tune" in skip.split() else []
    assert list(rows) == ["throughput", "tune", *fallback, "confirm", "fsdp", "resume",
                          "ray-train", "compiled"], summary
    for name, (_, status, _, result) in rows.items():
        skipped = name in skip.split() or (name == "ray-train" and "ray" in skip.split())
        assert status == ("skipped" if skipped else "passed"), (
            name, (tmp_path / f"{name}.err").read_text()[-3000:] if not skipped else "")
        if not skipped:
            assert result != "-", name  # its key number was read from its output
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "resumed at [" in rows["resume"][3]

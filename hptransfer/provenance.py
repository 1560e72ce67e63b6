"""Where and with what a run was made: versions, git commit, hardware, threads."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from pathlib import Path

from pydantic import Field

from hptransfer.spec import FrozenConfig

__all__ = ["Provenance", "available_cpus", "collect"]


class Provenance(FrozenConfig):
    hptransfer: str
    torch: str
    python: str
    platform: str
    processor: str
    cpus: int = Field(description="CPUs this process may run on")
    threads: int = Field(description="torch intra-op threads used by the run")
    git_sha: str | None = Field(None, description="commit of the hptransfer checkout, if any")


def available_cpus() -> int:
    """CPUs this process may use (respects taskset / cgroup affinity, unlike os.cpu_count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def _git_sha() -> str | None:
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


@functools.lru_cache(maxsize=1)
def _processor() -> str:
    # platform.processor() is empty on most Linux; /proc/cpuinfo names the model.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(threads: int) -> Provenance:
    import torch

    from hptransfer import __version__

    return Provenance(hptransfer=__version__, torch=torch.__version__,
                      python=sys.version.split()[0], platform=platform.platform(),
                      processor=_processor(), cpus=available_cpus(), threads=threads,
                      git_sha=_git_sha())

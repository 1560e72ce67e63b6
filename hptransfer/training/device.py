"""Where and how a run computes: device, torch threads, bf16 autocast."""

from __future__ import annotations

import os
import re

import torch

from hptransfer.errors import ConfigError
from hptransfer.provenance import available_cpus
from hptransfer.spec import ModelSpec, Precision

__all__ = ["DEVICE_FORMS", "autocast", "available_memory", "check_device", "check_memory",
           "resolve_device", "resolve_threads"]

# bytes per parameter a run holds at the least: fp32 weights, their gradients, and Adam's
# two moments (Lion keeps one: 12)
_BYTES_PER_PARAMETER = 16


def resolve_threads(threads: int | None = None) -> int:
    """Threads to use: the argument, else ``HPTRANSFER_THREADS``, else all available CPUs."""
    if threads is None:
        env = os.environ.get("HPTRANSFER_THREADS", "").strip()
        threads = int(env) if env else available_cpus()
    if threads < 1:
        raise ConfigError(f"threads must be at least 1, got {threads}")
    return threads


def autocast(spec: ModelSpec, device_type: str = "cpu"):
    """bf16 autocast when ``spec.precision`` asks for it: fp32 master weights and optimizer
    state, only matmul inputs and outputs in bf16 (on AVX512-BF16 CPUs ~4× faster)."""
    return torch.autocast(device_type, dtype=torch.bfloat16,
                          enabled=spec.precision is Precision.BF16)


# what --device accepts: torch.device() takes more ("CPU" raises, "cuda:-1" raises, "mps",
# "xla" and others parse but hptransfer does not train there), and "" would mean the CPU
_DEVICE = re.compile(r"cpu|cuda(:[0-9]+)?")
DEVICE_FORMS = "cpu or cuda (cuda:N for the card of index N, from 0)"


def check_device(device: str | None) -> None:
    """Refuse a device that is not written as hptransfer accepts it (None: the default);
    whether this machine has it is :func:`resolve_device`'s question."""
    if device is not None and not (isinstance(device, str) and _DEVICE.fullmatch(device)):
        raise ConfigError(f"device {device!r} is not one hptransfer trains on: give "
                          f"{DEVICE_FORMS}, in lower case, or leave it out for the CPU")


def resolve_device(device: str | None = None) -> torch.device:
    """The device to train on: ``cpu`` (the default) or a CUDA device; a clear error for any
    other form, and when CUDA is asked for and this torch build or machine has none."""
    check_device(device)
    resolved = torch.device(device or "cpu")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but torch {torch.__version__} sees no "
                         f"CUDA GPU here; install a CUDA build of torch on a GPU machine, or "
                         f"train on the CPU")
    if resolved.type == "cuda" and resolved.index is not None:
        # CUDA's own error comes later and deep ("invalid device ordinal"); indices count
        # the cards CUDA_VISIBLE_DEVICES leaves visible, from 0
        visible = torch.cuda.device_count()
        if resolved.index >= visible:
            listed = os.environ.get("CUDA_VISIBLE_DEVICES")
            raise ConfigError(
                f"device {device!r} asked for, but this process sees {visible} CUDA card(s) "
                f"(cuda:0 to cuda:{visible - 1}"
                + (f"; CUDA_VISIBLE_DEVICES={listed}" if listed is not None else "")
                + f"): give an index below {visible}, or plain cuda for the first one")
    return resolved


def available_memory(device: torch.device) -> int | None:
    """Bytes this run can still allocate on ``device`` (None where the OS does not say)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_memory(parameters: int, device: torch.device, what: str, *,
                 drawn_whole: int = 0) -> None:
    """Refuse, before anything is allocated, a model whose weights, gradients and optimizer
    state alone do not fit (activations come on top: this refuses only the impossible).

    ``parameters``: those this process holds (a sharded rank's shards). ``drawn_whole``: the
    largest tensor a sharded init draws whole in host memory, beside the weights and before
    the gradients and optimizer state exist (:mod:`hptransfer.training.shards`); it counts
    on the CPU only (a GPU rank's card never holds it)."""
    needed = parameters * _BYTES_PER_PARAMETER
    if device.type == "cpu":
        needed = max(needed, (parameters + drawn_whole) * 4)
    free = available_memory(device)
    if free is not None and needed > free:
        raise ConfigError(
            f"{what} has {parameters:,} parameters: its weights, gradients and Adam state need "
            f"about {needed / 2**30:,.1f} GiB, more than the {free / 2**30:,.1f} GiB available "
            f"on {device}; train a smaller width or depth, or on a machine with more memory")

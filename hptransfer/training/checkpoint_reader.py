"""Reading a checkpoint folder written by ``torch.distributed.checkpoint`` (DCP) without
running anything stored in it.

DCP reads tensors safely (``torch.load(weights_only=True)``), but not the rest: its
``.metadata`` index is a plain pickle (``pickle.load``), and a stored object that is not a
tensor is read with ``torch.load(weights_only=False)``. Either would run code planted in a
checkpoint folder. Here the index is read by an unpickler that accepts DCP's own record
classes and nothing else (:func:`read_index`), and a stored object is refused
(:class:`TensorsOnly`): hptransfer's checkpoints hold tensors only, their loop state is JSON
(:mod:`hptransfer.training.checkpoint`).

This module imports ``torch.distributed.checkpoint`` (about a second); the checkpoint
module imports it only when a run saves or restores.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

__all__ = ["SafeReader", "TensorsOnly", "missing_files", "read_index"]

# What DCP's index may name: its own records, torch.Size, dtypes and layouts, and the path
# it was saved to (torch 2.13; a torch that moved them fails here, and its checkpoint is
# set aside: DCP promises no compatibility across versions anyway). Anything else — a
# function to call, a class of another module — is refused before it is looked up, as
# Python's pickle documentation shows ("Restricting Globals").
_INDEX_CLASSES = {
    *(("torch.distributed.checkpoint.metadata", name) for name in (
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties",
        "TensorStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING")),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"),
    ("torch", "Size"), ("torch.serialization", "_get_layout"),
    ("pathlib", "PosixPath"), ("pathlib", "WindowsPath"),
}


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if (module, name) not in _INDEX_CLASSES and not dtype:
            raise pickle.UnpicklingError(f"the checkpoint's index names {module}.{name}, "
                                         f"which a checkpoint index never holds")
        return super().find_class(module, name)


def read_index(where: Path) -> Metadata:
    """DCP's index of the checkpoint in ``where``: each tensor's global shape and dtype, and
    which file holds which of its chunks at which offset. Raises on anything else."""
    with open(where / ".metadata", "rb") as handle:
        index = _IndexUnpickler(handle).load()
    if not isinstance(index, Metadata):
        raise ValueError(f"its index is a {type(index).__name__}, not DCP's Metadata")
    return index


def missing_files(where: Path, index: Metadata) -> list[str]:
    """The files ``index`` names that are not in ``where`` with as many bytes as it says
    they hold (a name with a folder in it counts as missing: nothing outside is read)."""
    needed: dict[str, int] = {}
    for info in index.storage_data.values():
        name = str(info.relative_path)
        needed[name] = max(needed.get(name, 0), info.offset + info.length)
    missing = []
    for name, size in sorted(needed.items()):
        path = where / name
        if Path(name).name != name or not path.is_file() or path.stat().st_size < size:
            missing.append(name)
    return missing


class SafeReader(FileSystemReader):
    """DCP's file reader, with the index read by :func:`read_index`."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        index = read_index(Path(self.path))
        index.storage_meta = index.storage_meta or StorageMeta()
        index.storage_meta.load_id = self.load_id  # (as FileSystemReader does: for its logs)
        return index


class TensorsOnly(DefaultLoadPlanner):
    """DCP's load planner, refusing a stored object (DCP's own would unpickle it)."""

    def load_bytes(self, read_item: Any, value: Any) -> None:
        raise ValueError(f"the checkpoint stores {read_item.dest_index.fqn} as a pickled "
                         f"object; hptransfer's checkpoints hold tensors only")

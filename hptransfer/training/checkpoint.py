"""Checkpoints of a run in progress, so that a killed or preempted run resumes where it was.

What a checkpoint holds is everything the rest of the run depends on: the weights and the
optimizer's state (Adam's moments and step counts), the torch RNG, the position of the
batch generator, and the loop's own state (step, curves so far, first loss, time spent). A
resumed run therefore draws the same batches and takes the same steps as an uninterrupted
one, and ends with the same losses (bit for bit on the CPU with the same threads and the
same number of ranks: tests/test_checkpoint.py, tests/test_distributed.py).

Every rank writes its own shards. The tensors go through ``torch.distributed.checkpoint``
(DCP): each rank saves the parts of the weights and moments it holds (an FSDP2 rank its
1/N of every tensor; replicated tensors are written once, their writes spread over the
ranks), and on restore each rank reads only what it will hold. Nothing is gathered to
rank 0, nothing is broadcast from it: with a sharded target the whole state (12 bytes a
parameter) may fit no rank's memory, and writing it through one rank would take long enough
on a shared file system to trip the collective timeout. Unsharded runs use the same format
(one rank writes everything): one format, so a checkpoint moves between sharded, replicated
and one-process runs, and between world sizes (below). The layout, one folder per run::

    <folder>/<fingerprint>/step-00000008/    the checkpoint after step 8
        __0_0.distcp, __1_0.distcp, ...      each rank's tensors (DCP, torch.save records)
        .metadata                            DCP's index: each tensor's global shape, which
                                             rows are in which file at which offset
        manifest.json                        the loop's state, the world size, the format
    <folder>/<fingerprint>/step-00000012.partial/   a save in progress, or a killed one's

Atomic on completion: a save is written into ``step-N.partial``; once DCP returns, every
rank has written and fsynced its file (its last collective waits for all of them), rank 0
writes the manifest and renames the folder to ``step-N``, then deletes the older one. Only
a folder named ``step-N`` is ever loaded; anything else in the run's folder is what a kill
mid-save left, and the next save deletes it (so does a restore that resumes).

Another world size resumes too: DCP reads each rank's new shards out of whatever shards
were written (resharding), and every rank draws the same global batch whatever their
number (:mod:`hptransfer.training.ranks`), so the run goes on with the same batches. Its
losses then equal the uninterrupted run's only up to float rounding (the batch's gradient
is summed over other slices), and a warning says so; the manifest records the world size.

Safety: nothing in a checkpoint is unpickled as code. DCP reads tensors with
``torch.load(weights_only=True)``; its ``.metadata`` index is a pickle, read here by an
unpickler that accepts DCP's own record classes and nothing else, and the loader refuses a
stored object that is not a tensor (DCP would unpickle it freely):
:mod:`hptransfer.training.checkpoint_reader`.
The loop's state is JSON. What a checkpoint holds is checked against the run before it is
trusted (:meth:`Checkpointer.restore`): a step short of the planned steps, curves as long as
the steps, every tensor this run needs with its global shape and dtype, every file the index
names, long enough. A checkpoint that fails is moved aside (``<fingerprint>.unreadable``)
and the run starts over, with a warning, so a crafted or stale checkpoint cannot end a run as
"complete" without training it.

The folder's name is a fingerprint of what the run trains and of the record it belongs to
(:func:`fingerprint`: the storage and study, :attr:`Checkpointing.owner`), so only a rerun of
the same run, recorded in the same place, can resume from it. Every rank reads and writes
the folder: on a multi-node job it must be on a file system every node shares (a save whose
files rank 0 cannot see is refused with that advice).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from pydantic import Field

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.training.execution import Checkpointing
from hptransfer.training.ranks import Ranks

if TYPE_CHECKING:
    from torch.distributed.checkpoint.metadata import Metadata

__all__ = ["Checkpointer", "LoopState", "Manifest", "fingerprint"]

_FORMAT = 2  # bumped when the layout changes (2: DCP folders); another format is not resumed
_MANIFEST = "manifest.json"
_PARTIAL = ".partial"
_COMPLETE = re.compile(r"step-(\d{8})")  # the only names ever loaded
T = TypeVar("T")


def fingerprint(spec: ModelSpec, hparams: HParams, budget: Budget, seed: int,
                corpus_hash: str, owner: str = "") -> str:
    """What a run trains and where it is recorded (``owner``: the storage and study), as 16
    hex digits: equal for a rerun of the same run in the same record only. The world size
    is not part of it: a run resumes on another number of ranks (module docstring)."""
    identity = {"spec": spec.model_dump(mode="json"), "hparams": hparams.model_dump(mode="json"),
                "budget": budget.model_dump(mode="json"), "seed": seed, "corpus": corpus_hash,
                "format": _FORMAT}
    if owner:  # (without one, the fingerprint of checkpoints written before owners existed)
        identity["owner"] = owner
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class LoopState(FrozenConfig):
    """The training loop's own state after ``step`` completed steps."""

    step: int
    train_losses: tuple[float, ...]
    val_curve: tuple[CurvePoint, ...]
    first_loss: float | None
    train_seconds: float
    timed_steps: int = Field(0, description="steps past each attempt's warm-up (0 in a "
                                            "checkpoint from before this field)")
    timed_seconds: float = Field(0.0, description="the time those steps took")
    batches: dict[str, Any] = Field(description="the numpy batch generator's state")
    resumed_at: tuple[int, ...] = Field((), description="steps earlier attempts resumed from")


class Manifest(FrozenConfig):
    """A checkpoint's ``manifest.json``: what it holds beside its tensors."""

    format: int
    run: str = Field(description="the run's fingerprint")
    world_size: int = Field(gt=0, description="the ranks that wrote it")
    loop: LoopState


class Checkpointer:
    """Saves and restores one run's checkpoints (module docstring). Every rank of the run
    makes the same calls: saving and loading are collectives."""

    def __init__(self, policy: Checkpointing, run: str, ranks: Ranks) -> None:
        self.policy, self.ranks, self.run = policy, ranks, run
        self.folder = Path(policy.folder) / run
        self._last_step, self._last_time = 0, time.monotonic()

    def due(self, step: int) -> bool:
        """Whether to save after ``step``. Steps are the same on every rank; clocks are not,
        so with a time interval rank 0's decides for all (one tiny broadcast a step)."""
        policy = self.policy
        if policy.every_steps is not None and step - self._last_step >= policy.every_steps:
            return True
        if policy.every_minutes is None:
            return False
        late = time.monotonic() - self._last_time >= 60 * policy.every_minutes
        return bool(self.ranks.shared(float(late)))

    def save(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
             state: LoopState) -> None:
        import torch.distributed.checkpoint as dcp

        _, _, tensors = _state(model, optimizer)
        final = self.folder / f"step-{state.step:08d}"
        partial = final.with_name(final.name + _PARTIAL)
        if self.ranks.rank == 0:
            # what killed saves left, an old `partial` included; the last complete
            # checkpoint stays until this one is complete
            self._clear(keep=self._complete())
        # a broadcast from rank 0 as a barrier: no rank writes into `partial` (DCP creates
        # it on every rank) before rank 0 has cleared an old one of the same name away
        self.ranks.shared(0.0)
        writer = dcp.FileSystemWriter(partial, thread_count=1, sync_files=True)
        _collective("saving the checkpoint", lambda: dcp.save(
            tensors, storage_writer=writer, process_group=self.ranks.group))
        self._last_step, self._last_time = state.step, time.monotonic()
        if self.ranks.rank != 0:
            return
        from hptransfer.training.checkpoint_reader import missing_files, read_index

        # the index as written, the one a restore reads: the Metadata dcp.save returns has
        # no storage_data on torch 2.11 (measured: every save of the lent H200's
        # gpu_check failed on it), though 2.13's has
        missing = missing_files(partial, read_index(partial))
        if missing:
            raise RuntimeError(
                f"the checkpoint folder {self.policy.folder} is not shared by the run's ranks: "
                f"rank 0 does not see {', '.join(missing[:3])}, written by the others; give "
                f"--checkpoint-dir a folder on a file system every node mounts")
        manifest = Manifest(format=_FORMAT, run=self.run, world_size=self.ranks.size,
                            loop=state)
        with open(partial / _MANIFEST, "w") as handle:
            handle.write(manifest.model_dump_json())
            handle.flush()
            os.fsync(handle.fileno())
        if final.exists():  # (saved at this step by an attempt that died after renaming)
            shutil.rmtree(final)
        os.replace(partial, final)  # the checkpoint exists from here on, whole
        _fsync_folder(self.folder)
        self._clear(keep=[final])

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                planned: int) -> LoopState | None:
        """Load the run's latest checkpoint into ``model`` and ``optimizer`` (built as at the
        start of the run, before any step) and return the loop state to continue from; None
        when there is none, or when it does not fit a run of ``planned`` steps of this model
        (set aside)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        from hptransfer.training.checkpoint_reader import SafeReader, TensorsOnly

        # a first attempt (no checkpoint yet) leaves the model and optimizer untouched
        if not self.ranks.shared(float(self.ranks.rank == 0 and bool(self._complete()))):
            return None
        # every rank's destinations: its shards of the weights and of Adam's moments
        # (get_state_dict creates the moments, with a step at LR 0, for the load to fill)
        weights, moments, tensors = _state(model, optimizer)
        manifest = self._latest(tensors, planned) if self.ranks.rank == 0 else None
        text = self.ranks.shared_text(None if manifest is None else manifest.model_dump_json())
        if text is None:
            # set aside: back to a fresh optimizer, as moments made at step 1 would change
            # the bias correction of every step (the step at LR 0 left the weights as they
            # were: AdamW and Lion scale every change, weight decay included, by the LR)
            optimizer.state.clear()
            return None
        manifest = Manifest.model_validate_json(text)
        where = self.folder / f"step-{manifest.loop.step:08d}"
        try:
            _collective(f"loading the checkpoint {where}", lambda: dcp.load(
                tensors, storage_reader=SafeReader(where), planner=TensorsOnly(),
                process_group=self.ranks.group))
        except RuntimeError as error:
            # it passed rank 0's checks, so a rank could not read its part (a file changed
            # since, or a folder this rank does not see): the model is part-loaded now, so
            # this attempt fails; the next one starts over
            if self.ranks.rank == 0:
                self._set_aside(error)
            raise
        # the loads above were in place; setting them is what the state dict API asks
        set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=moments)
        torch.set_rng_state(tensors["torch_rng"])
        if manifest.world_size != self.ranks.size and self.ranks.rank == 0:
            warnings.warn(
                f"the checkpoint {where} was written by {manifest.world_size} rank(s) and this "
                f"run has {self.ranks.size}: its shards were redistributed and the run goes on "
                f"with the same batches, but its losses will match an uninterrupted run's "
                f"only to float rounding (each rank's slice of the batch changed)",
                stacklevel=3)
        self._last_step, self._last_time = manifest.loop.step, time.monotonic()
        return manifest.loop

    def discard(self) -> None:
        """Delete the run's checkpoints (the run is over), unless the policy keeps them."""
        if self.ranks.rank == 0 and not self.policy.keep:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _latest(self, tensors: dict[str, torch.Tensor], planned: int) -> Manifest | None:
        """Rank 0: the manifest of the latest complete checkpoint if it fits the run (else
        it is set aside); what killed saves left is deleted."""
        complete = self._complete()
        self._clear(keep=complete[-1:])  # (older ones are left only by a kill mid-save)
        if not complete:
            return None
        latest = complete[-1]
        from hptransfer.training.checkpoint_reader import missing_files, read_index

        try:
            manifest = Manifest.model_validate_json((latest / _MANIFEST).read_text())
            if manifest.format != _FORMAT or manifest.run != self.run:
                raise ValueError(f"format {manifest.format}, run {manifest.run}")
            if latest.name != f"step-{manifest.loop.step:08d}":
                raise ValueError(f"its manifest is of step {manifest.loop.step}")
            _check_loop(manifest.loop, planned)
            index = read_index(latest)
            _check_tensors(index, tensors)
            missing = missing_files(latest, index)
            if missing:
                raise ValueError(f"{', '.join(missing[:3])} missing or cut short")
        except Exception as error:  # noqa: BLE001 - any checkpoint not to trust is set aside alike
            self._set_aside(error)
            return None
        return manifest

    def _set_aside(self, error: BaseException) -> None:
        aside = self.folder.with_name(f"{self.folder.name}.unreadable")
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(self.folder, aside)
        warnings.warn(f"the checkpoint {self.folder} cannot be resumed from ({error}); it was "
                      f"moved to {aside} and the run starts from step 0", stacklevel=4)

    def _complete(self) -> list[Path]:
        """The run's complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _COMPLETE.fullmatch(p.name))

    def _clear(self, keep: list[Path]) -> None:
        """Delete everything in the run's folder but ``keep``: checkpoints replaced by a
        newer one, and whatever a save killed halfway left (never loaded: not ``step-N``)."""
        if not self.folder.is_dir():
            return
        for entry in self.folder.iterdir():
            if entry not in keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer
           ) -> tuple[dict[str, Any], dict[str, Any], dict[str, torch.Tensor]]:
    """The model's and optimizer's state dicts (DTensor shards where sharded, keyed by
    parameter name) and one flat dict of their tensors, plus the torch RNG, as saved.

    The optimizer's ``param_groups`` (LRs, betas, λ, ε) are left out: they follow from the
    spec and hparams, which the run's fingerprint fixes, the loop sets each group's LR before
    every step, and DCP would store them as pickled objects, which are not loaded here."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    weights, moments = get_state_dict(model, optimizer)
    flat = {f"model.{name}": tensor for name, tensor in weights.items()}
    for name, slots in moments["state"].items():
        for slot, value in slots.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"the optimizer's {slot} of {name} is a {type(value).__name__}; "
                                f"checkpoints hold tensors only")
            flat[f"optimizer.{name}.{slot}"] = value
    flat["torch_rng"] = torch.get_rng_state()
    return weights, moments, flat


def _collective(what: str, call: Callable[[], T]) -> T:
    """``call()`` (a DCP save or load), its failure on any rank raised on every rank as a
    RuntimeError: DCP raises a CheckpointException, a BaseException, which error handling
    meant for failed runs (``except Exception``) would let through."""
    from torch.distributed.checkpoint import CheckpointException

    with warnings.catch_warnings():
        # one process without a process group: DCP warns that it saves in one process
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        try:
            return call()
        except CheckpointException as error:
            rank, (first, _) = min(error.failures.items())
            raise RuntimeError(f"{what} failed on rank {rank}: "
                               f"{type(first).__name__}: {first}") from first


def _check_loop(state: LoopState, planned: int) -> None:
    """Raise ValueError unless the loop state is one this run could have saved: after a
    step short of the last (a checkpoint is never saved at the end), one training loss per
    step, validation points at steps already taken. Trusting a step equal to the planned
    steps would record the run as complete without a loss, and it would never be retried."""
    import numpy as np

    if not 0 < state.step < planned:
        raise ValueError(f"it was saved after step {state.step} of a run of {planned} steps")
    if len(state.train_losses) != state.step:
        raise ValueError(f"{len(state.train_losses)} training losses for {state.step} steps")
    steps = [point.step for point in state.val_curve]
    if steps != sorted(set(steps)) or any(not 0 < s <= state.step for s in steps):
        raise ValueError(f"validation points at steps {steps}, after step {state.step}")
    if state.first_loss != state.train_losses[0] or not 0 <= state.train_seconds < math.inf:
        raise ValueError("its first loss or its time spent does not match its losses")
    np.random.default_rng().bit_generator.state = state.batches  # raises if not a state


def _check_tensors(index: Metadata, tensors: dict[str, torch.Tensor]) -> None:
    """Raise ValueError unless the checkpoint has every tensor the run loads, each with its
    global shape (a DTensor's shape is the global one) and dtype."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    for key, tensor in tensors.items():
        entry = index.state_dict_metadata.get(key)
        if not isinstance(entry, TensorStorageMetadata):
            raise ValueError(f"it has no tensor {key}: it is not of this model")
        if tuple(entry.size) != tuple(tensor.shape) or entry.properties.dtype != tensor.dtype:
            raise ValueError(f"its {key} is {entry.properties.dtype} {tuple(entry.size)}, "
                             f"not {tensor.dtype} {tuple(tensor.shape)}")


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX: fsync the directory); a no-op elsewhere."""
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)

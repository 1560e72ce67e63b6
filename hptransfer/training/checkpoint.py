"""Checkpoints of a run in progress, so that a killed or preempted run resumes where it was.

What a checkpoint holds is everything the rest of the run depends on: the weights and the
optimizer state (as *full* state dicts keyed by parameter name, gathered on rank 0 by
``torch.distributed.checkpoint.state_dict``, so a checkpoint of an FSDP2 run loads into a
DDP or single-process one and back), the position of the batch generator, the torch RNG,
and the loop's own state (step, curves so far, first loss, time spent). A resumed run
therefore draws the same batches and takes the same steps as an uninterrupted one, and ends
with the same losses (bit for bit on the CPU with the same threads: tests/test_checkpoint.py).

Safety and atomicity: the file is written by ``torch.save`` to a temporary name in the same
folder, fsynced and renamed over the previous one (a kill mid-write leaves the previous
checkpoint whole), and read with ``torch.load(weights_only=True)``, which accepts only
tensors and plain containers and never unpickles code. A file that cannot be read that way
is moved aside (``.unreadable``) and the run starts over, with a warning.

The file name is a fingerprint of what the run trains and of the record it belongs to
(:func:`fingerprint`: the storage and study, :attr:`Checkpointing.owner`), so only a rerun
of the same run, recorded in the same place, can resume from it. What a file holds is
checked against the run before it is trusted (:meth:`Checkpointer.restore`): a step short of
the planned steps, curves as long as the steps, the model's parameter names and shapes; a
file that fails is set aside like an unreadable one, so a crafted or stale checkpoint
cannot end a run as "complete" without training it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint
from hptransfer.spec import FrozenConfig, ModelSpec
from hptransfer.training.execution import Checkpointing
from hptransfer.training.ranks import Ranks

__all__ = ["Checkpointer", "LoopState", "fingerprint"]

_FORMAT = 1  # bumped when the file's layout changes; another format is not resumed


def fingerprint(spec: ModelSpec, hparams: HParams, budget: Budget, seed: int,
                corpus_hash: str, owner: str = "") -> str:
    """What a run trains and where it is recorded (``owner``: the storage and study), as 16
    hex digits: equal for a rerun of the same run in the same record only."""
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
    batches: dict[str, Any] = Field(description="the numpy batch generator's state")
    resumed_at: tuple[int, ...] = Field((), description="steps earlier attempts resumed from")


class Checkpointer:
    """Saves and restores one run's checkpoint (module docstring). Every rank of the run
    makes the same calls: gathering a sharded state dict is a collective."""

    def __init__(self, policy: Checkpointing, run: str, ranks: Ranks) -> None:
        self.policy, self.ranks = policy, ranks
        self.path = Path(policy.folder) / f"{run}.pt"
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
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        weights, moments = get_state_dict(model, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        self._last_step, self._last_time = state.step, time.monotonic()
        if self.ranks.rank != 0:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"format": _FORMAT, "run": self.path.stem, "loop": state.model_dump_json(),
                   "model": weights, "optimizer": moments, "torch_rng": torch.get_rng_state()}
        temporary = self.path.with_name(f"{self.path.name}.tmp-{os.getpid()}")
        try:
            with open(temporary, "wb") as handle:
                torch.save(payload, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_folder(self.path.parent)

    def restore(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                planned: int) -> LoopState | None:
        """Load the run's checkpoint into ``model`` and ``optimizer`` (built as at the start
        of the run) and return the loop state to continue from; None when there is none, or
        when the file does not fit a run of ``planned`` steps of this model (set aside)."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        payload = self._read(model, planned) if self.ranks.rank == 0 else None
        loop = self.ranks.shared_text(payload["loop"] if payload is not None else None)
        if loop is None:
            return None
        # rank 0 holds the full state dicts, the other ranks empty ones to receive into.
        # Model and optimizer are set by their own calls: set_state_dict() takes an empty
        # model dict to mean "optimizer only" and would skip the model's broadcast there.
        options = StateDictOptions(full_state_dict=True,
                                   broadcast_from_rank0=self.ranks.parallel)
        set_model_state_dict(model, payload["model"] if payload is not None else {},
                             options=options)
        set_optimizer_state_dict(model, optimizer,
                                 payload["optimizer"] if payload is not None else {},
                                 options=options)
        if payload is not None:
            torch.set_rng_state(payload["torch_rng"])
        state = LoopState.model_validate_json(loop)
        self._last_step, self._last_time = state.step, time.monotonic()
        return state

    def _read(self, model: torch.nn.Module, planned: int) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            payload = torch.load(self.path, map_location="cpu", weights_only=True)
            if payload.get("format") != _FORMAT or payload.get("run") != self.path.stem:
                raise ValueError(f"format {payload.get('format')}, run {payload.get('run')}")
            _check_fits(payload, LoopState.model_validate_json(payload["loop"]), model,
                        planned)
        except Exception as error:  # noqa: BLE001 - any unreadable file is set aside alike
            aside = self.path.with_name(f"{self.path.name}.unreadable")
            os.replace(self.path, aside)
            warnings.warn(f"the checkpoint {self.path} cannot be resumed from ({error}); it "
                          f"was moved to {aside} and the run starts from step 0", stacklevel=3)
            return None
        return payload

    def discard(self) -> None:
        """Delete the checkpoint (the run is over), unless the policy keeps it."""
        if self.ranks.rank == 0 and not self.policy.keep:
            self.path.unlink(missing_ok=True)


def _check_fits(payload: dict[str, Any], state: LoopState, model: torch.nn.Module,
                planned: int) -> None:
    """Raise ValueError unless the checkpoint is one this run could have written: saved
    after a step short of the last (a checkpoint is never saved at the end), one training
    loss per step, validation points at steps already taken, and the model's parameters
    with their shapes (the optimizer's moments too). Trusting a step equal to the planned
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
    shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    weights = payload["model"]
    saved = {name: tuple(t.shape) for name, t in weights.items() if name in shapes}
    if set(shapes) - set(weights) or saved != shapes:
        wrong = sorted(n for n in shapes if saved.get(n) != shapes[n])
        raise ValueError(f"its weights do not fit this model ({', '.join(wrong[:3])})")
    for name, moments in payload["optimizer"].get("state", {}).items():
        if name not in shapes:
            raise ValueError(f"optimizer state for {name!r}, which this model does not have")
        for key, value in moments.items():
            if isinstance(value, torch.Tensor) and value.ndim and (
                    tuple(value.shape) != shapes[name]):
                raise ValueError(f"the optimizer's {key} of {name} has shape "
                                 f"{tuple(value.shape)}, not {shapes[name]}")


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

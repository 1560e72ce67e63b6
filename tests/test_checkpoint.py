"""Checkpoints: a run killed with SIGKILL mid-run resumes and ends as the uninterrupted run.

The killed runs are real processes: each trains with checkpoints every 4 steps and kills
itself with SIGKILL (no cleanup, no atexit, like a preemption) at a chosen moment: from its
validation callback at a chosen step, after a checkpoint was written and before the next,
or in the middle of writing one. Rerunning the same run resumes from the last complete
checkpoint; its losses must equal, exactly, those of the run trained in one go with the
same single thread. (Several ranks: tests/test_distributed.py.)
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import Status
from hptransfer.spec import ModelSpec
from hptransfer.training.checkpoint import fingerprint
from hptransfer.training.execution import Checkpointing, Execution
from hptransfer.training.loop import train

SPEC = ModelSpec(width=32, depth=2, head_dim=16, seq_len=32, base_width=32)
BUDGET = Budget(steps=12, eval_every=2, eval_tokens=1024)
HPARAMS = HParams(batch_size=4, lr=2.0**-6, weight_decay=0.1)

# One attempt of the run in a child process: train, and SIGKILL itself at the moment
# "eval:N" (validation after step N), "write:N" (the save after step N has written its
# tensors, not yet DCP's index) or "publish:N" (that save wholly written, not yet renamed).
_ATTEMPT = """
import os, signal, sys
from pathlib import Path
from hptransfer.budget import Budget
from hptransfer.data.corpus import load_corpus
from hptransfer.hparams import HParams
from hptransfer.spec import ModelSpec
from hptransfer.training.execution import Checkpointing, Execution
from hptransfer.training.loop import train

corpus, folder, (moment, at) = sys.argv[1], sys.argv[2], sys.argv[3].split(":")

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

def on_eval(point):
    if moment == "eval" and point.step == int(at):
        die()

if moment == "write":
    from torch.distributed.checkpoint import FileSystemWriter
    finish = FileSystemWriter.finish  # writes the index, once every rank's file is written
    FileSystemWriter.finish = lambda self, *args, **kwargs: (
        die() if Path(self.path).name == f"step-{int(at):08d}.partial"
        else finish(self, *args, **kwargs))
if moment == "publish":
    replace = os.replace
    os.replace = lambda source, target: (
        die() if Path(target).name == f"step-{int(at):08d}" else replace(source, target))

spec, hparams, budget = (ModelSpec.model_validate_json(sys.argv[4]),
                         HParams.model_validate_json(sys.argv[5]),
                         Budget.model_validate_json(sys.argv[6]))
train(spec, hparams, budget, load_corpus(corpus), threads=1, on_eval=on_eval,
      execution=Execution(checkpoint=Checkpointing(folder=folder, every_steps=4)))
"""


def _killed_attempt(text_file: str, folder: Path, moment: str) -> None:
    done = subprocess.run([sys.executable, "-c", _ATTEMPT, text_file, str(folder), moment,
                           SPEC.model_dump_json(), HPARAMS.model_dump_json(),
                           BUDGET.model_dump_json()],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr


def _policy(folder: Path, **extra) -> Execution:
    return Execution(checkpoint=Checkpointing(folder=folder, every_steps=4, **extra))


def _checkpoints(folder: Path, corpus) -> Path:
    """The run's folder of checkpoints (one ``step-N`` folder when complete)."""
    return folder / fingerprint(SPEC, HPARAMS, BUDGET, 0, corpus.content_hash)


def _names(checkpoints: Path) -> list[str]:
    return sorted(p.name for p in checkpoints.iterdir())


@pytest.fixture(scope="module")
def uninterrupted(tiny_corpus):
    return train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1)


def _same_run(resumed, alone) -> None:
    assert resumed.status is Status.COMPLETE
    assert resumed.final_val_loss == alone.final_val_loss  # exactly: same steps, same batches
    assert resumed.val_curve == alone.val_curve
    assert resumed.train_curve == alone.train_curve
    assert (resumed.steps, resumed.tokens_seen) == (alone.steps, alone.tokens_seen)


def test_killed_twice_resumes_to_the_same_losses(tmp_path, text_file, tiny_corpus,
                                                 uninterrupted):
    _killed_attempt(text_file, tmp_path, "eval:6")  # checkpoint after step 4, killed at 6
    checkpoints = _checkpoints(tmp_path, tiny_corpus)
    assert _names(checkpoints) == ["step-00000004"]  # nothing half-written left behind
    assert {p.name for p in (checkpoints / "step-00000004").iterdir()} == {
        "__0_0.distcp", ".metadata", "manifest.json"}
    _killed_attempt(text_file, tmp_path, "eval:10")  # resumed at 4, saved at 8, killed at 10
    assert _names(checkpoints) == ["step-00000008"]  # the one it replaced is deleted
    resumed = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1, execution=_policy(tmp_path))
    _same_run(resumed, uninterrupted)
    assert resumed.resumed_at == (4, 8)  # the record says where each attempt took over
    assert uninterrupted.resumed_at == ()
    assert not checkpoints.exists()  # the run is over: its checkpoints are deleted


@pytest.mark.parametrize("moment", ["write", "publish"])
def test_a_save_killed_halfway_is_never_loaded(tmp_path, text_file, tiny_corpus,
                                               uninterrupted, moment):
    """Killed while saving after step 8 — its tensors written but not DCP's index, or
    everything written but the folder not yet renamed — the run leaves its checkpoint after
    step 4 whole beside a ``step-8.partial`` folder. The rerun never loads the partial one
    (only a renamed folder is complete): it resumes at 4, deletes the partial one, and ends
    as the uninterrupted run."""
    _killed_attempt(text_file, tmp_path, f"{moment}:8")
    checkpoints = _checkpoints(tmp_path, tiny_corpus)
    assert _names(checkpoints) == ["step-00000004", "step-00000008.partial"]
    written = {p.name for p in (checkpoints / "step-00000008.partial").iterdir()}
    assert written == ({"__0_0.distcp"} if moment == "write"
                       else {"__0_0.distcp", ".metadata", "manifest.json"})
    resumed = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                    execution=_policy(tmp_path, keep=True))
    _same_run(resumed, uninterrupted)
    assert resumed.resumed_at == (4,)
    assert _names(checkpoints) == ["step-00000008"]  # its own, saved after step 8


def test_checkpoints_do_not_change_the_run(tmp_path, tiny_corpus, uninterrupted):
    kept = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                 execution=_policy(tmp_path, keep=True))
    _same_run(kept, uninterrupted)
    assert kept.resumed_at == ()
    assert _names(_checkpoints(tmp_path, tiny_corpus)) == ["step-00000008"]  # the last one


def test_another_run_does_not_resume_from_it(tmp_path, text_file, tiny_corpus):
    _killed_attempt(text_file, tmp_path, "eval:6")
    other = HPARAMS.model_copy(update={"lr": 2.0**-5})
    record = train(SPEC, other, BUDGET, tiny_corpus, threads=1, execution=_policy(tmp_path))
    assert record.resumed_at == ()
    assert _checkpoints(tmp_path, tiny_corpus).exists()  # still there for its own run


class _Planted:
    """A pickle that would create a file when unpickled: code a checkpoint must not run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["truncated", "code"])
def test_an_unreadable_checkpoint_is_set_aside_and_the_run_starts_over(
        tmp_path, tiny_corpus, uninterrupted, content):
    """A shard file cut short, or an index (DCP's ``.metadata``, a pickle) that would run
    code when unpickled: the checkpoint is moved aside, nothing in it runs, and the run
    trains from step 0."""
    train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1, execution=_policy(tmp_path, keep=True))
    checkpoints = _checkpoints(tmp_path, tiny_corpus)
    kept = checkpoints / "step-00000008"
    marker = tmp_path / "code-ran"
    if content == "truncated":
        shard = kept / "__0_0.distcp"
        shard.write_bytes(shard.read_bytes()[:shard.stat().st_size // 2])
    else:
        (kept / ".metadata").write_bytes(pickle.dumps(_Planted(marker)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                       execution=_policy(tmp_path))
    assert any("cannot be resumed from" in str(w.message) for w in caught)
    assert not marker.exists()  # the restricted unpickler never ran the planted code
    assert checkpoints.with_name(checkpoints.name + ".unreadable").exists()
    _same_run(record, uninterrupted)
    assert record.resumed_at == ()


def test_a_policy_needs_an_interval(tmp_path):
    with pytest.raises(ValueError, match="give every_steps or every_minutes"):
        Checkpointing(folder=tmp_path, every_steps=None, every_minutes=None)


def test_a_time_interval_saves_too(tmp_path, tiny_corpus, monkeypatch):
    """every_minutes alone: with the clock moved on by an hour at each look, a checkpoint is
    due after every step; the run is unchanged and its file is kept for inspection."""
    import hptransfer.training.checkpoint as checkpoint_module

    clock = iter(range(0, 10**7, 3600))
    monkeypatch.setattr(checkpoint_module.time, "monotonic", lambda: float(next(clock)))
    record = train(SPEC, HPARAMS, Budget(steps=3, eval_every=3, eval_tokens=1024),
                   tiny_corpus, threads=1, execution=Execution(checkpoint=Checkpointing(
                       folder=tmp_path, every_minutes=30, keep=True)))
    assert record.ok
    saved = list(tmp_path.glob("*/step-*"))
    assert len(saved) == 1 and os.path.getsize(saved[0] / "__0_0.distcp") > 0


@pytest.mark.slow
def test_a_compiled_run_trains_what_the_eager_run_trains(tiny_corpus):
    """torch.compile (inductor, on the CPU here: tens of seconds to compile) changes how the
    step runs, not what it computes: the losses agree with eager ones to float rounding."""
    from hptransfer.training.execution import Compilation

    eager = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1)
    compiled = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                     execution=Execution(compilation=Compilation.COMPILED))
    assert compiled.ok
    assert [p.loss for p in compiled.val_curve] == pytest.approx(
        [p.loss for p in eager.val_curve], rel=1e-3)


def _altered(checkpoints: Path, change) -> None:
    """Rewrite the run's kept checkpoint as a crafted one: ``change(loop, index)`` edits its
    manifest's loop state (a dict) and DCP's index in place; the folder is renamed after the
    step the loop state then claims."""
    [kept] = checkpoints.iterdir()
    manifest = json.loads((kept / "manifest.json").read_text())
    with open(kept / ".metadata", "rb") as handle:
        index = pickle.load(handle)  # (this test's own file: trusted)
    change(manifest["loop"], index)
    (kept / "manifest.json").write_text(json.dumps(manifest))
    with open(kept / ".metadata", "wb") as handle:
        pickle.dump(index, handle)
    kept.rename(checkpoints / f"step-{manifest['loop']['step']:08d}")


def _finished(loop, index) -> None:  # "saved" after the last step: trusted, no loss
    loop["step"] = 12
    loop["train_losses"] = loop["train_losses"] + [1.0] * 4


def _short_curve(loop, index) -> None:
    loop["train_losses"] = loop["train_losses"][:3]


def _late_point(loop, index) -> None:
    loop["val_curve"].append({"step": 11, "tokens": 11 * 128, "loss": 1.0})


def _wide_weights(loop, index) -> None:
    import torch

    entry = index.state_dict_metadata[next(k for k in index.state_dict_metadata
                                           if k.startswith("model."))]
    entry.size = torch.Size([*entry.size[:-1], 7])


def _no_moments(loop, index) -> None:  # weights only: a resumed Adam would restart its moments
    for key in [k for k in index.state_dict_metadata if k.startswith("optimizer.")]:
        del index.state_dict_metadata[key]


@pytest.mark.parametrize("change", [_finished, _short_curve, _late_point, _wide_weights,
                                    _no_moments], ids=lambda f: f.__name__.strip("_"))
def test_a_checkpoint_that_does_not_fit_the_run_is_set_aside(tmp_path, tiny_corpus,
                                                             uninterrupted, change):
    """A crafted or stale checkpoint (step = the planned steps, curves of other lengths,
    other shapes, tensors missing) is not trusted: before, a step equal to the planned steps
    recorded the run as complete with no loss, and it was never retried."""
    train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1, execution=_policy(tmp_path, keep=True))
    checkpoints = _checkpoints(tmp_path, tiny_corpus)
    _altered(checkpoints, change)  # the kept checkpoint, after step 8 of 12, altered
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                       execution=_policy(tmp_path))
    assert any("cannot be resumed from" in str(w.message) for w in caught)
    assert checkpoints.with_name(checkpoints.name + ".unreadable").exists()
    _same_run(record, uninterrupted)
    assert record.resumed_at == ()


def test_a_checkpoint_is_bound_to_its_owner(tmp_path, tiny_corpus):
    """The owner (storage and study) is part of the file name: a run recorded elsewhere
    trains from step 0 (tests/test_hostile.py runs this through confirm)."""
    def policy(owner: str) -> Execution:
        return Execution(checkpoint=Checkpointing(folder=tmp_path, every_steps=4, keep=True,
                                                  owner=owner))

    train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1, execution=policy("a.db#s.confirm.w64"))
    elsewhere = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                      execution=policy("b.db#s.confirm.w64"))
    again = train(SPEC, HPARAMS, BUDGET, tiny_corpus, threads=1,
                  execution=policy("a.db#s.confirm.w64"))
    assert elsewhere.resumed_at == () and again.resumed_at == (8,)

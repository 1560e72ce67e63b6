"""Confirmation runs as a cluster would run them, on this CPU machine: a torchrun job of two
gloo ranks, a confirm killed with SIGKILL mid-run and run again, and the live curve.

Both start from a tuned tiny study (``tuned``). The torchrun job trains two offsets with
both ranks and must record what one local process records (within float rounding). The
killed confirm is a real process killed as soon as its first checkpoint exists; the same
command, run again at once (its process is gone, so is its lease), must resume it from that
checkpoint (the record says at which step) and end with exactly the losses of a confirm
that was never interrupted.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from hptransfer.backends import Backend
from hptransfer.budget import Budget
from hptransfer.confirmation.runs import confirm
from hptransfer.study.names import confirmation_study_name
from hptransfer.study.records import records_of
from hptransfer.study.schema import Attr, TrialStatus
from hptransfer.study.search import SamplerKind

TOLERANCE = 1e-4  # relative: two ranks average the same global batch as one process
OFFSETS = "0,1"


def _tune(folder: Path, config, corpus, name: str) -> str:
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    url = f"sqlite:///{folder / f'{name}.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPTRANSFER_HOME", str(folder / "home"))
        tune(config, study=name, widths=(32, 64), trials=3, storage=url, corpus=corpus,
             runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    return url


def _copy(url: str, name: str) -> str:
    source = Path(url.removeprefix("sqlite:///"))
    target = source.with_name(name)
    shutil.copyfile(source, target)
    return f"sqlite:///{target}"


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HPTRANSFER_HOME": str(home), "HPTRANSFER_THREADS": "1", **extra}


def _runs(url: str, study: str, width: int, every: bool = False):
    """The completed runs by offset (``every``: as a list, duplicates included)."""
    runs = optuna.load_study(study_name=confirmation_study_name(study, width), storage=url)
    done = [t for t in runs.get_trials(deepcopy=False)
            if t.user_attrs.get(Attr.STATUS) == TrialStatus.COMPLETE.value]
    return done if every else {t.user_attrs[Attr.OFFSET]: t for t in done}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_corpus, tiny_study_config) -> str:
    return _tune(tmp_path_factory.mktemp("torchrun"), tiny_study_config, tiny_corpus, "tiny")


@pytest.mark.parametrize("sharding", ["replicate", "fsdp"])
def test_a_torchrun_job_of_two_ranks_records_what_one_process_does(tiny, tmp_path, sharding):
    by_torchrun, alone = _copy(tiny, f"{sharding}.db"), _copy(tiny, f"alone-{sharding}.db")
    home = tmp_path / "home"
    # with a tracker: rank 0 alone logs each run (docs/trackers.md)
    tracked = importlib.util.find_spec("tensorboard") is not None and sharding == "replicate"
    trackers = ["--tracker", "tensorboard", "--tracker-dir", str(tmp_path / "tb")] \
        if tracked else []
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "hptransfer.cli", "confirm", "--target-width", "64", "--study", "tiny",
         "--storage", by_torchrun, "--offsets", OFFSETS, "--backend", "torchrun",
         "--sharding", sharding, "--json", *trackers],
        env=_env(home), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-12000:]
    result = json.loads(done.stdout)  # rank 0 alone prints; the JSON is whole
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPTRANSFER_HOME", str(home))
        local = confirm(64, study="tiny", storage=alone, offsets=(0.0, 1.0), threads=1)
    assert [r["offset"] for r in result["runs"]] == [r.offset for r in local.runs]
    for theirs, mine in zip(result["runs"], local.runs, strict=True):
        assert theirs["loss"] is not None, (theirs, done.stderr[-3000:])
        assert theirs["loss"] == pytest.approx(mine.loss, rel=TOLERANCE)
    assert result["verdict"] == local.verdict.value
    if tracked:  # one run per offset (not one per rank) and the verdict's
        logged = [p for p in (tmp_path / "tb" / "runs" / "tiny").iterdir() if p.is_dir()]
        assert len(logged) == len(result["runs"]) + 1, sorted(p.name for p in logged)
    for offset, trial in _runs(by_torchrun, "tiny", 64).items():
        assert trial.user_attrs[Attr.BACKEND] == Backend.TORCHRUN.value
        assert trial.user_attrs[Attr.WORKERS] == 2
        # the curve was written while the run trained: one intermediate value per point
        curve = json.loads(trial.user_attrs[Attr.VAL_CURVE])
        assert trial.intermediate_values == {p["tokens"]: p["loss"] for p in curve}, offset


def test_torchrun_needs_torchrun(tiny):
    from hptransfer.errors import ConfigError

    with pytest.raises(ConfigError, match="not started by torchrun"):
        confirm(64, study="tiny", storage=tiny, offsets=(0.0, 1.0), backend=Backend.TORCHRUN)


@pytest.fixture(scope="module")
def long_runs(tmp_path_factory, tiny_corpus, tiny_study_config) -> str:
    """A tiny study whose runs are long enough (400 steps, about a second at width 64) for
    a process to be killed in the middle of one."""
    config = tiny_study_config.model_copy(update={
        "budget": Budget(steps=400, eval_every=100, eval_tokens=1024)})
    return _tune(tmp_path_factory.mktemp("killed"), config, tiny_corpus, "long")


def _confirm_command(url: str, checkpoints: Path) -> list[str]:
    return [sys.executable, "-m", "hptransfer.cli", "confirm", "--target-width", "64",
            "--study", "long", "--storage", url, "--offsets", OFFSETS, "--threads", "1",
            "--workers", "1", "--checkpoint-every", "20", "--checkpoint-dir", str(checkpoints),
            "--json"]


def test_a_killed_confirm_resumes_its_run_from_the_checkpoint(long_runs, tmp_path):
    killed, uninterrupted = _copy(long_runs, "killed.db"), _copy(long_runs, "whole.db")
    checkpoints, home = tmp_path / "checkpoints", tmp_path / "home"
    env = _env(home)
    child = subprocess.Popen(_confirm_command(killed, checkpoints), env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(checkpoints.glob("*/step-????????")):  # (a complete one: renamed)
        assert child.poll() is None, f"confirm ended before a checkpoint: {child.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint within 120 s"
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)  # mid-run: no cleanup, the trial is left RUNNING
    child.wait()
    # no wait: its process is gone, so its lease is (a process on this machine holds a lease
    # exactly while it runs, whatever its heartbeat says)
    again = subprocess.run(_confirm_command(killed, checkpoints), env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    whole = subprocess.run(_confirm_command(uninterrupted, tmp_path / "other"), env=env,
                           capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed, reference = _runs(killed, "long", 64), _runs(uninterrupted, "long", 64)
    assert sorted(resumed) == sorted(reference) == [0.0, 1.0]
    steps = {o: json.loads(t.user_attrs[Attr.RESUMED_AT]) for o, t in resumed.items()}
    killed_offset = next(o for o, at in steps.items() if at)  # the run the kill interrupted
    at = steps.pop(killed_offset)
    assert len(at) == 1 and at[0] % 20 == 0 and 0 < at[0] < 400
    assert list(steps.values()) == [[]]  # the other run was never interrupted
    for offset in (0.0, 1.0):  # exactly: same steps, same batches, one thread
        assert (resumed[offset].user_attrs[Attr.VAL_CURVE]
                == reference[offset].user_attrs[Attr.VAL_CURVE])
    lost = [r for r in records_of(optuna.load_study(
        study_name=confirmation_study_name("long", 64), storage=killed))
        if r.status is TrialStatus.LOST]
    assert len(lost) == 1  # the killed run's trial, marked lost and retried
    # and nothing trained twice: the killed confirm's waiting run and the retry were reused
    assert len(_runs(killed, "long", 64, every=True)) == 2
    assert not list(checkpoints.iterdir())  # finished runs leave no checkpoint behind


def test_status_shows_a_running_trial_s_curve(tiny, tiny_study_config):
    """A run in progress (a trial left RUNNING with two reported points, as a long
    confirmation run is while it trains) is shown by hptransfer status with its last point."""
    from click.testing import CliRunner

    from hptransfer.cli import main
    from hptransfer.hparams import HParams
    from hptransfer.study.lifecycle import write_inputs

    url = _copy(tiny, "live.db")
    runs = optuna.create_study(study_name=confirmation_study_name("tiny", 128), storage=url)
    trial = runs.ask()
    write_inputs(runs._storage, trial._trial_id, spec=tiny_study_config.spec_at(128),
                 hparams=HParams(batch_size=4), corpus_hash="sha256:x", threads=1, seed=0,
                 attrs=((Attr.OFFSET, 0.5),))
    trial.report(3.25, 256)
    trial.report(2.75, 512)  # tokens: 4 rows × 32 tokens × 2 and 4 steps; 4 planned
    shown = CliRunner().invoke(main, ["status", "--study", "tiny", "--storage", url])
    assert shown.exit_code == 0, shown.output
    assert ("running: tiny.confirm.w128 trial 0 (offset +0.5), val loss 2.7500 at 512 tokens "
            "of 512 (100%); 2 point(s) so far") in shown.output
    as_json = json.loads(CliRunner().invoke(main, ["status", "--study", "tiny", "--storage",
                                                   url, "--json"]).output)
    assert as_json["live"] == [{"study": "tiny.confirm.w128", "number": 0, "offset": 0.5,
                                "points": [[256, 3.25], [512, 2.75]], "tokens_planned": 512}]

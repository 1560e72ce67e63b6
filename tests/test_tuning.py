"""Tuning proxies: :func:`hptransfer.study.tune.tune` and the ``tune``, ``worker``, ``status`` and
``plot`` commands.

Every trial is a real (tiny) model: width 32 or 64, one block, 32-token windows, batch 4, a
handful of steps on the synthetic corpus of ``conftest.py``. Storages are files in the test's
tmp folder and ``HPTRANSFER_HOME`` points there too, so nothing reaches ``~/.hptransfer``.
The robustness tests use real processes: one is killed with SIGKILL mid-trial and the study
resumed; two workers share a study on SQLite and on a journal file.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import signal
import sqlite3
import subprocess
import time
import warnings
from collections import Counter
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState
from processes import (
    PID_ATTR,
    console_script,
    freeze_outside_a_transaction,
    wait_for_another_worker,
)
from pydantic import ValidationError
from tiny import TINY_MODEL_TOML

from hptransfer.budget import Budget
from hptransfer.cli import main
from hptransfer.errors import StudyError
from hptransfer.hparams import HParams
from hptransfer.space import SearchSpace
from hptransfer.spec import ModelSpec
from hptransfer.study.attributes import load_config, study_names
from hptransfer.study.config import ConfigFile, StudyConfig
from hptransfer.study.names import width_study_name
from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialRecord, TrialStatus
from hptransfer.study.search import Pruning, SamplerKind, WarmStart
from hptransfer.study.storage import Access, normalize, open_storage
from hptransfer.study.tune import tune
from hptransfer.study.worker import LocalRunner

LR_RANGE = (2.0**-8, 2.0**-4)  # warm-start grid (2 octaves apart): 2^-8, 2^-6, 2^-4
GRID = [2.0**-8, 2.0**-6, 2.0**-4]
ENQUEUED = [2.0**-6, 2.0**-8, 2.0**-4]  # the grid, centre first (study.search.warm_start_lrs)

# a [hparams]/[budget] base for every CLI tune: the command has no --batch-size flag
TINY_TOML = """\
[hparams]
batch_size = 4

[budget]
eval_every = 2
eval_tokens = 1024
"""


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch) -> Path:
    """A private HPTRANSFER_HOME and working directory for every test."""
    path = tmp_path / "home"
    monkeypatch.setenv("HPTRANSFER_HOME", str(path))
    monkeypatch.setenv("HPTRANSFER_THREADS", "1")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    return path


@pytest.fixture
def config(tiny_corpus, text_file) -> StudyConfig:
    return StudyConfig(
        spec=ModelSpec(width=32, depth=1, head_dim=16, seq_len=32, base_width=32),
        budget=Budget(steps=4, eval_every=2, eval_tokens=1024),
        space=SearchSpace(lr=LR_RANGE, base=HParams(batch_size=4)),
        corpus_hash=tiny_corpus.content_hash, data=text_file)


@pytest.fixture
def tiny_toml(tmp_path) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_TOML)
    return str(path)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def tune_args(text_file: str, tiny_toml: str, *extra: str) -> list[str]:
    """``hptransfer tune`` for the tiny setting; ``extra`` adds or overrides flags."""
    return ["tune", "--config", tiny_toml, "--data", text_file, "--depth", "1",
            "--seq-len", "32", "--head-dim", "16", "--base-width", "32",
            "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off",
            "--steps", "4", "--sampler", "tpe", "--workers", "1", "--json", *extra]


def invoke(runner: CliRunner, args: list[str], code: int = 0):
    result = runner.invoke(main, args)
    if result.exit_code != code:
        raise AssertionError(f"exit {result.exit_code} (wanted {code}) for {args}:\n"
                             f"{result.output}", result.exception)
    return result


def records_of(name: str, url: str) -> list[TrialRecord]:
    return sorted(load_trials(name, open_storage(url)), key=lambda r: (r.width, r.number))


def finished(records: list[TrialRecord], width: int | None = None) -> list[TrialRecord]:
    return [r for r in records if r.finished and (width is None or r.width == width)]


# ---- the Python API -------------------------------------------------------------------------


def test_tune_records_every_trial(config, tiny_corpus, tmp_path):
    url = f"sqlite:///{tmp_path / 's.db'}"
    seen: list[TrialRecord] = []
    result = tune(config, study="t", widths=(32, 64), trials=4, storage=url,
                  corpus=tiny_corpus, on_trial=seen.append,
                  runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)

    assert result.storage == url and [s.width for s in result.widths] == [32, 64]
    assert [s.finished for s in result.widths] == [4, 4] and len(seen) == 8
    records = records_of("t", url)
    assert len(records) == 8
    for r in records:
        assert r.status is TrialStatus.COMPLETE, r.reason
        assert r.hparams is not None and r.hparams.batch_size == 4
        assert math.isfinite(r.final_val_loss) and r.val_curve[-1].loss == r.final_val_loss
        assert [p.step for p in r.val_curve] == [2, 4]
        assert r.flops > 0 and r.wall_time_s > 0 and r.tokens_per_s > 0
    for summary in result.widths:
        best = min(finished(records, summary.width), key=lambda r: r.final_val_loss)
        assert (summary.best_number, summary.best_loss) == (best.number, best.final_val_loss)
    assert result.best(64).width == 64

    assert config.space.lr_octaves(step=2) == GRID
    for width in (32, 64):
        study = optuna.load_study(study_name=width_study_name("t", width), storage=url)
        trials = sorted(study.get_trials(), key=lambda t: t.number)
        # the warm-start grid first, once each; then the sampler's own points
        assert [t.params["lr"] for t in trials[:len(GRID)]] == ENQUEUED
        assert all(t.user_attrs.get("grid_point") for t in trials[:len(GRID)])
        assert not any(t.params["lr"] in GRID for t in trials[len(GRID):])
        for t in trials:
            attrs = t.user_attrs
            assert attrs["width"] == width
            assert ModelSpec.model_validate_json(attrs["spec"]) == config.spec_at(width)
            assert HParams.model_validate_json(attrs["hparams"]).lr == t.params["lr"]
            assert attrs["corpus_hash"] == tiny_corpus.content_hash
            assert json.loads(attrs["provenance"])["threads"] == 1
            assert t.value == attrs["final_val_loss"]


def test_resume_tops_up_and_keeps_finished_trials(config, tiny_corpus, tmp_path):
    url = str(tmp_path / "s.log")
    run = dict(study="t", widths=(32,), storage=url, corpus=tiny_corpus,
               runner=LocalRunner(workers=1, threads=1))
    tune(config, trials=2, **run, sampler=SamplerKind.TPE)
    first = records_of("t", url)
    assert [r.number for r in finished(first)] == [0, 1]
    assert [r.status for r in first[2:]] == [TrialStatus.WAITING]  # the last grid point

    tune(config, trials=4, **run, sampler=SamplerKind.TPE)
    second = records_of("t", url)
    assert len(second) == 4 and len(finished(second)) == 4
    assert second[:2] == first[:2]  # same numbers, params, values, curves, timings
    assert [r.hparams.lr for r in second[:3]] == ENQUEUED  # the grid was not enqueued twice

    tune(config, trials=4, **run, sampler=SamplerKind.TPE)
    assert records_of("t", url) == second


def test_a_study_refuses_a_different_config(config, tiny_corpus, tmp_path):
    url = str(tmp_path / "s.log")
    tune(config, study="t", widths=(32,), trials=1, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    longer = config.model_copy(update={"budget": Budget(steps=5, eval_every=2,
                                                         eval_tokens=1024)})
    with pytest.raises(StudyError, match="different budget"):
        tune(longer, study="t", widths=(32,), trials=2, storage=url, corpus=tiny_corpus,
             sampler=SamplerKind.TPE)
    reseeded = config.model_copy(update={"seed": 1})
    with pytest.raises(StudyError, match="different seed"):
        tune(reseeded, study="t", widths=(32,), trials=2, storage=url, corpus=tiny_corpus,
             sampler=SamplerKind.TPE)
    assert len(records_of("t", url)) == 3  # one finished, two grid points waiting


def test_cli_refuses_a_different_config(runner, text_file, tiny_toml, tmp_path):
    storage = str(tmp_path / "s.log")
    args = tune_args(text_file, tiny_toml, "--proxy-width", "32", "--trials", "1",
                     "--storage", storage, "--study", "c")
    invoke(runner, args)
    result = invoke(runner, [*args, "--steps", "5"], code=2)
    assert "different budget" in result.output and "--study" in result.output
    assert len(records_of("c", storage)) == 3


def test_diverged_trials_are_recorded_and_counted(config, tiny_corpus, tmp_path):
    space = SearchSpace(lr=(2.0**-2, 2.0**4),
                        base=HParams(batch_size=4, grad_clip=0, warmup_fraction=0))
    huge = config.model_copy(update={"space": space})
    url = str(tmp_path / "s.log")
    result = tune(huge, study="d", widths=(32,), trials=5, storage=url, corpus=tiny_corpus,
                  runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    records = records_of("d", url)
    assert len(finished(records)) == 5 == result.best(32).finished
    diverged = [r for r in records if r.status is TrialStatus.DIVERGED]
    assert diverged and result.best(32).diverged == len(diverged)
    assert {2.0**4} <= {r.hparams.lr for r in diverged}
    for r in diverged:
        assert r.final_val_loss is None and "loss" in r.reason
    study = optuna.load_study(study_name="d.w32", storage=open_storage(url))
    assert {t.state for t in study.trials if t.user_attrs["status"] == "diverged"} == {
        TrialState.FAIL}  # a diverged run bounds the stable region; it is not a loss


# ---- real processes: kill -9 and resume; two workers ----------------------------------------


def _trials_if_ready(db: Path, name: str):
    """The trials of ``name``, or None while the tune is still creating the file: opening an
    RDB storage creates missing tables, which must not race the tune's own creation."""
    if not db.exists():
        return None
    connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        found = connection.execute("SELECT 1 FROM studies WHERE study_name = ?",
                                   (name,)).fetchone()
    except sqlite3.OperationalError:  # no tables yet
        return None
    finally:
        connection.close()
    if found is None:
        return None
    return optuna.load_study(study_name=name,
                             storage=open_storage(str(db), Access.READ)).get_trials()


def test_kill_9_mid_trial_then_resume(runner, text_file, tiny_toml, tmp_path, home):
    db = tmp_path / "s.db"
    command = [console_script(), *tune_args(
        text_file, tiny_toml, "--proxy-width", "64", "--steps", "80", "--trials", "3",
        "--study", "k", "--storage", str(db))]
    env = {**os.environ, "HPTRANSFER_HOME": str(home), "HPTRANSFER_THREADS": "1"}
    with open(tmp_path / "first.err", "w") as err:
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, (
                "the tune finished before a trial was caught running: "
                + (tmp_path / "first.err").read_text())
            assert time.monotonic() < deadline, "no trial completed within 90 s"
            trials = _trials_if_ready(db, "k.w64") or []
            if any(t.state is TrialState.COMPLETE for t in trials):
                # frozen first, then looked at again: a trial it finishes between the look
                # and the kill would leave none running (it raced the test before)
                if not freeze_outside_a_transaction(process, db):
                    continue
                trials = _trials_if_ready(db, "k.w64")
                complete = {t.number: t.value for t in trials
                            if t.state is TrialState.COMPLETE}
                if any(t.state is TrialState.RUNNING and PID_ATTR in t.system_attrs
                       for t in trials):
                    os.kill(process.pid, signal.SIGKILL)
                    break
                os.kill(process.pid, signal.SIGCONT)
            time.sleep(0.05)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL

    after_kill = _trials_if_ready(db, "k.w64")
    interrupted = [t for t in after_kill if t.state is TrialState.RUNNING]
    assert len(interrupted) == 1, [(t.number, t.state) for t in after_kill]
    lost = interrupted[0]
    assert lost.system_attrs[PID_ATTR] == process.pid  # so it is reclaimed at once

    invoke(runner, command[1:])  # the same command, resumed (in-process: no second startup)

    trials = {t.number: t for t in _trials_if_ready(db, "k.w64")}
    for number, value in complete.items():  # nothing finished before the kill was lost
        assert trials[number].state is TrialState.COMPLETE and trials[number].value == value
    records = {r.number: r for r in records_of("k", str(db))}
    assert records[lost.number].status is TrialStatus.LOST and records[lost.number].reason
    retries = [r for r in records.values() if r.retry_of == lost.number]
    assert len(retries) == 1 and retries[0].status is TrialStatus.COMPLETE
    assert trials[retries[0].number].params == lost.params
    assert trials[retries[0].number].user_attrs.get("grid_point") == lost.user_attrs.get(
        "grid_point")
    done_records = finished(list(records.values()))
    assert len(done_records) == 3
    assert not [r for r in records.values() if r.status in (TrialStatus.RUNNING,
                                                            TrialStatus.WAITING)]
    assert Counter(r.hparams.lr for r in done_records) == Counter(GRID)


@pytest.mark.parametrize("file_name", ["s.db", "s.log"])
def test_two_workers_record_every_trial_once(file_name, runner, text_file, tiny_toml,
                                             tmp_path, monkeypatch):
    from hptransfer.cli import studies

    url = normalize(str(tmp_path / file_name))
    trials = 6
    # The child worker needs a few seconds to start; tiny trials would all be done by then.
    # So the first progress update (after this process's first trial) waits until the child
    # has started a trial of its own: the remaining trials surely run concurrently.
    original, waited = studies.TrialProgress.update, []

    def update(self, trial):
        if not waited:
            waited.append(True)
            wait_for_another_worker(url, "w.w32")
        original(self, trial)

    monkeypatch.setattr(studies.TrialProgress, "update", update)
    invoke(runner, tune_args(text_file, tiny_toml, "--proxy-width", "32", "--steps", "20",
                             "--trials", str(trials), "--workers", "2", "--study", "w",
                             "--storage", url))

    study = optuna.load_study(study_name="w.w32", storage=open_storage(url))
    all_trials = study.get_trials()
    numbers = [t.number for t in all_trials]
    assert len(numbers) == len(set(numbers)) and sorted(numbers) == list(range(len(numbers)))
    records = records_of("w", url)
    done = finished(records)
    assert trials <= len(done) <= trials + 1, [(r.number, r.status) for r in records]
    if len(done) > trials:
        warnings.warn(f"two workers overshot --trials {trials}: {len(done)} finished "
                      f"({file_name})", stacklevel=1)
    assert all(r.status is TrialStatus.COMPLETE for r in records)  # none lost, none waiting
    assert len({t.system_attrs[PID_ATTR] for t in all_trials}) == 2
    lrs = Counter(r.hparams.lr for r in done)
    assert all(lrs[lr] == 1 for lr in GRID), lrs


# ---- the command line: validation, config files, status, plot, worker ------------------------


BAD_TUNE_INPUT = {
    "widths-not-numbers": (["--widths", "a,b"], "--widths"),
    "width-zero": (["--widths", "0"], "--widths"),
    "both-width-options": (["--proxy-width", "32", "--widths", "32,64"], "not both"),
    "lr-range-one-number": (["--lr-range", "1"], "LOW,HIGH"),
    "lr-range-reversed": (["--lr-range", "0.1,0.01"], "low < high"),
    "batch-sizes-not-powers": (["--batch-sizes", "3,5"], "powers of two"),
    "unknown-sampler": (["--sampler", "nope"], "nope"),
    "missing-config": (["--config", "missing.toml"], "missing.toml"),
    "head-dim-vs-width": (["--head-dim", "48", "--proxy-width", "64"], "head_dim"),
    "missing-data": (["--data", "/nope"], "/nope"),
}
BAD_CONFIG_FILES = {
    "unknown-section": ("[tuning]\ntrials = 2\n", "tuning"),
    "unknown-tune-key": ("[tune]\ntrails = 2\n", "trails"),
    "unknown-spec-key": ("[spec]\ndpeth = 1\n", "dpeth"),
    "unknown-budget-key": ("[budget]\nstepz = 3\n", "stepz"),
    "widths-not-a-list": ("[tune]\nwidths = \"a\"\n", "widths"),
    "not-toml": ("[tune\n", "cannot parse"),
}


def _assert_wrote_nothing(storage: Path, home: Path) -> None:
    assert not storage.exists()
    assert not home.exists() or not any(home.iterdir())
    assert not any(Path.cwd().iterdir())


@pytest.mark.parametrize("case", BAD_TUNE_INPUT, ids=str)
def test_bad_tune_input_exits_2_and_writes_nothing(case, runner, text_file, tiny_toml,
                                                   tmp_path, home):
    flags, message = BAD_TUNE_INPUT[case]
    storage = tmp_path / "s.db"
    result = invoke(runner, tune_args(text_file, tiny_toml, "--trials", "1", "--storage",
                                      str(storage), *flags), code=2)
    assert message in result.output
    _assert_wrote_nothing(storage, home)


@pytest.mark.parametrize("case", BAD_CONFIG_FILES, ids=str)
def test_bad_config_file_exits_2_and_writes_nothing(case, runner, text_file, tmp_path, home):
    text, message = BAD_CONFIG_FILES[case]
    config_file = tmp_path / "bad.toml"
    config_file.write_text(text)
    storage = tmp_path / "s.db"
    result = invoke(runner, ["tune", "--config", str(config_file), "--data", text_file,
                             "--trials", "1", "--storage", str(storage)], code=2)
    assert message in result.output
    _assert_wrote_nothing(storage, home)


def test_config_file_with_a_flag_overriding_it(runner, text_file, tmp_path):
    config_file = tmp_path / "study.toml"
    config_file.write_text(f"""\
[tune]
study = "fromfile"
widths = [32, 64]
trials = 2
storage = "{tmp_path / 's.log'}"
data = "{text_file}"

{TINY_MODEL_TOML}warmup_fraction = 0.25

[space]
lr = [0.00390625, 0.0625]
batch_sizes = [4]

[budget]
steps = 3
eval_every = 2
eval_tokens = 1024
""")
    invoke(runner, ["tune", "--config", str(config_file), "--steps", "2", "--trials", "1",
                    "--weight-decay-range", "off", "--json"])
    url = str(tmp_path / "s.log")
    storage = open_storage(url)
    assert study_names(storage) == {"fromfile": [32, 64]}
    stored = load_config("fromfile", storage)
    assert (stored.spec.depth, stored.spec.seq_len, stored.spec.base_width) == (1, 32, 32)
    assert stored.space.lr == LR_RANGE and stored.space.batch_sizes == (4,)
    assert stored.space.base.batch_size == 4 and stored.space.base.warmup_fraction == 0.25
    assert stored.space.weight_decay is None  # the flag
    # --steps 2 beats the file's 3; a searched batch size turns steps into a token budget
    assert stored.budget.tokens == 2 * 4 * 32 and stored.budget.eval_every == 2
    assert stored.data.path == text_file
    assert [len(finished(records_of("fromfile", url), w)) for w in (32, 64)] == [1, 1]


def test_status_and_plot(runner, text_file, tiny_toml, tmp_path, home):
    assert "no studies yet" in invoke(runner, ["status"]).output
    invoke(runner, tune_args(text_file, tiny_toml, "--widths", "32,64", "--trials", "2",
                             "--study", "s"))  # the default storage, in HPTRANSFER_HOME
    assert (home / "studies.db").is_file()

    assert "s: widths 32, 64" in invoke(runner, ["status"]).output
    assert json.loads(invoke(runner, ["status", "--json"]).stdout) == {"s": [32, 64]}
    summary = json.loads(invoke(runner, ["status", "--study", "s", "--json"]).stdout)
    assert summary["study"] == "s" and summary["running_or_waiting"] == 2  # a grid point each
    assert [(w["width"], w["finished"]) for w in summary["widths"]] == [(32, 2), (64, 2)]
    table = invoke(runner, ["status", "--study", "s"]).output
    assert "study s" in table and "best loss" in table

    missing = invoke(runner, ["status", "--study", "missing"], code=2)
    assert "'missing'" in missing.output and "studies here: s" in missing.output

    out = tmp_path / "reports"
    invoke(runner, ["plot", "--study", "s", "--out", str(out)])
    assert (out / "s_transfer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (out / "s_plot.html").read_text().lower().startswith("<!doctype html")
    invoke(runner, ["plot", "--study", "missing", "--out", str(out)], code=2)


def test_worker_joins_and_tops_up(config, tiny_corpus, runner, tmp_path):
    url = normalize(str(tmp_path / "s.log"))
    tune(config, study="j", widths=(32, 64), trials=2, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    invoke(runner, ["worker", "--study", "j", "--storage", url, "--trials", "4", "--quiet"])
    records = records_of("j", url)
    assert [len(finished(records, w)) for w in (32, 64)] == [4, 4]
    assert [r.hparams.lr for r in records if r.width == 32][:3] == ENQUEUED

    missing = invoke(runner, ["worker", "--study", "nope", "--storage", url, "--trials", "1"],
                     code=2)
    assert "studies here: j" in missing.output


# ---- samplers --------------------------------------------------------------------------------

# what each sampler imports beyond hptransfer's own dependencies
SAMPLER_NEEDS = {SamplerKind.CMAES: "cmaes", SamplerKind.GP: "scipy", SamplerKind.QMC: "scipy"}


OPTUNA_SAMPLERS = [s for s in SamplerKind if s is not SamplerKind.LADDER]  # test_ladder.py


@pytest.mark.parametrize("sampler", OPTUNA_SAMPLERS, ids=lambda s: s.value)
def test_every_optuna_sampler_runs(sampler, config, tiny_corpus, tmp_path):
    needs = SAMPLER_NEEDS.get(sampler)
    missing = needs is not None and importlib.util.find_spec(needs) is None
    if sampler is SamplerKind.CMAES and missing:
        pytest.skip("the cmaes package is not installed (pip install cmaes)")
    # no warm start, so the sampler itself picks every point; the GP only models the loss
    # surface after its 5 random startup trials, so it gets 6
    trials = 6 if sampler is SamplerKind.GP else 3
    run = dict(study="x", widths=(32,), trials=trials, storage=str(tmp_path / "s.log"),
               sampler=sampler, warm_start=WarmStart.NONE, corpus=tiny_corpus,
               runner=LocalRunner(workers=1, threads=1))
    if missing:
        with pytest.raises(StudyError, match=f"pip install {needs}"):
            tune(config, **run)
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        result = tune(config, **run)
    assert result.best(32).finished == trials
    lrs = [r.hparams.lr for r in records_of("x", str(tmp_path / "s.log"))]
    assert len(set(lrs)) == trials and all(LR_RANGE[0] <= lr <= LR_RANGE[1] for lr in lrs)
    if sampler is SamplerKind.GRID:
        assert set(lrs) <= set(config.space.lr_octaves())


def test_grid_sampler_runs_the_whole_grid_once(config, tiny_corpus, tmp_path):
    """Optuna's GridSampler would call study.stop() on its last point, which raises outside
    study.optimize; hptransfer's ask/tell grid runs every point once and refuses more."""
    points = len(config.space.lr_octaves())
    run = dict(study="g", widths=(32,), sampler=SamplerKind.GRID, warm_start=WarmStart.NONE,
               storage=str(tmp_path / "s.log"), corpus=tiny_corpus,
               runner=LocalRunner(workers=1, threads=1))
    result = tune(config, trials=points, **run)
    assert result.best(32).finished == points
    lrs = sorted(r.hparams.lr for r in records_of("g", str(tmp_path / "s.log")))
    assert lrs == sorted(config.space.lr_octaves())
    with pytest.raises(StudyError, match=f"grid has {points} points"):
        tune(config, trials=points + 1, **run)


# ---- the base width: the narrowest proxy width unless set, one per study -------------------


def test_the_base_width_is_the_narrowest_proxy_width_unless_set(tiny_corpus):
    from hptransfer.study.config import from_sources, study_config

    assert from_sources(widths=(64, 32)).spec.base_width == 32
    assert from_sources(widths=(64,), spec={"base_width": 16}).spec.base_width == 16
    file = ConfigFile(spec={"base_width": 128})
    assert from_sources(file, widths=(32,)).spec.base_width == 128
    assert study_config(corpus=tiny_corpus, widths=(128, 64)).spec.base_width == 64
    given = ModelSpec(depth=1, base_width=128)
    assert study_config(spec=given, corpus=tiny_corpus, widths=(32,)).spec.base_width == 128


def test_batch_sizes_without_the_base_start_from_the_nearest_one():
    # `tune --batch-sizes 8` (base 16) once crashed on Ray: the ladder's first trials asked
    # for batch 16, which the space's define-by-run suggest could not hold
    from hptransfer.space import SearchSpace
    from hptransfer.study.config import from_sources

    def base(sizes, **hparams):
        file = ConfigFile(hparams=hparams)
        return from_sources(file, widths=(32,), space={"batch_sizes": sizes}).space.base

    assert base((8,)).batch_size == 8
    assert base((32, 64)).batch_size == 32
    assert base((8, 32)).batch_size == 8  # a tie: the cheaper
    assert base((8, 16, 32)).batch_size == 16  # the default when it is a choice
    with pytest.raises(ValidationError, match="base batch size 64 is not one of"):
        base((8,), batch_size=64)  # set by the user: refused, not moved
    with pytest.raises(ValidationError, match="add it, or set the base"):
        SearchSpace(batch_sizes=(4, 8), base=HParams(batch_size=16))


def test_a_study_keeps_its_base_width_when_widths_are_added(runner, text_file, tiny_toml,
                                                            tmp_path, home):
    url = str(tmp_path / "s.db")

    def args(*extra: str) -> list[str]:  # tune_args without its --base-width
        given = tune_args(text_file, tiny_toml, "--trials", "2", "--study", "b", "--storage",
                          url, *extra)
        at = given.index("--base-width")
        return given[:at] + given[at + 2:]

    invoke(runner, args("--widths", "64,32"))
    assert load_config("b", url).spec.base_width == 32  # the narrowest
    invoke(runner, args("--widths", "128"))  # not refused: the study's base 32 is kept
    assert load_config("b", url).spec.base_width == 32
    assert sorted(study_names(url)["b"]) == [32, 64, 128]
    result = runner.invoke(main, args("--widths", "128", "--base-width", "64"))
    assert result.exit_code == 2 and "different spec" in result.output


def test_predict_refuses_widths_tuned_under_different_bases(config, tiny_corpus, tmp_path):
    from hptransfer.errors import PredictionError
    from hptransfer.study.search import open_width_study
    from hptransfer.transfer import predict_hparams

    url = f"sqlite:///{tmp_path / 's.db'}"
    tune(config, study="mixed", widths=(32,), trials=2, storage=url, corpus=tiny_corpus,
         runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    # a width study made under another base, as an older hptransfer or a hand-made study
    # could leave it (tune itself refuses a different config)
    other = config.model_copy(update={"spec": config.spec.model_copy(
        update={"base_width": 64, "width": 64})})
    open_width_study("mixed", 64, other, open_storage(url), sampler=SamplerKind.TPE,
                     pruning=Pruning.NONE)
    with pytest.raises(PredictionError, match="different µP base widths.*base 32: widths 32; "
                                              "base 64: widths 64"):
        predict_hparams(128, study="mixed", storage=url)

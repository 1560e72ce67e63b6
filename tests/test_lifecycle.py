"""The trial lifecycle (hptransfer.study.lifecycle): a waiting trial is claimed by exactly
one process; of a holder finishing and another worker taking its trial over exactly one
wins; a taken-over run records nothing and says so in one line; Ctrl-C hands a trial back
to be retried first; retries run before anything new; a follower waits for a late planner
while its process lives; a verdict is only given over finished runs.

The races are real: separate processes on one SQLite file or journal, many times over.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.record import CurvePoint, Verdict
from hptransfer.study import leases
from hptransfer.study.attributes import write_planner
from hptransfer.study.lifecycle import (
    INTERRUPTED,
    OwnedTrial,
    TakenOver,
    claim_waiting,
    enqueue,
    reclaim_lost,
    take_over,
)
from hptransfer.study.records import finished_count, records_of
from hptransfer.study.schema import Attr, TrialStatus
from hptransfer.study.storage import open_storage
from hptransfer.study.trial import record_run
from hptransfer.study.worker import work, work_ladder

LRS = [2.0**-8, 2.0**-7, 2.0**-6, 2.0**-5, 2.0**-4]


@pytest.fixture
def config(tiny_study_config):
    return tiny_study_config.model_copy(update={"budget": Budget(steps=4, eval_every=2,
                                                                 eval_tokens=1024)})


def _study(tmp_path: Path, file: str = "s.db", name: str = "x.w32") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=open_storage(str(tmp_path / file)),
                               load_if_exists=True)


def _enqueue_lrs(study, lrs=LRS) -> None:
    for lr in lrs:
        enqueue(study, {"lr": lr}, **{Attr.GRID_POINT: True})


# ---- one claim per trial, one winner per trial: real processes -------------------------------

_CLAIMER = textwrap.dedent("""
    import json, sys
    import optuna
    from hptransfer.study.lifecycle import claim_waiting
    from hptransfer.study.storage import open_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="x.w32", storage=open_storage(sys.argv[1]))
    claimed = []
    while (trial := claim_waiting(study)) is not None:
        claimed.append(trial.number)
    print(json.dumps(claimed))
""")


@pytest.mark.parametrize("file", ["s.db", "s.log"])
def test_three_processes_never_claim_the_same_trial(file, tmp_path):
    """Before every SQLite transaction took the write lock first, 3 processes claiming 300
    waiting trials claimed 27 of them twice (the second holder then crashed on a finished
    trial: the busy-machine crash)."""
    study = _study(tmp_path, file)
    for i in range(300):
        enqueue(study, {"lr": 1e-3 * (1 + i / 300)})
    url = str(tmp_path / file)
    claimers = [subprocess.Popen([sys.executable, "-c", _CLAIMER, url], stdout=subprocess.PIPE,
                                 text=True) for _ in range(3)]
    claimed = [n for c in claimers for n in json.loads(c.communicate(timeout=300)[0])]
    assert all(c.returncode == 0 for c in claimers)
    assert sorted(claimed) == list(range(300))  # each once


_FINISHER = textwrap.dedent("""
    import sys
    import optuna
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState
    from hptransfer.study.lifecycle import take_over, write_outcome
    from hptransfer.study.storage import open_storage
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    role, url = sys.argv[1], sys.argv[2]
    study = optuna.load_study(study_name="x.w32", storage=open_storage(url))
    storage = study._storage
    for trial in sorted(study.get_trials(), key=lambda t: t.number):
        if role == "holder":  # what OwnedTrial.finish does: the outcome, then the state
            try:
                storage.set_trial_user_attr(trial._trial_id, "status", "complete")
                storage.set_trial_user_attr(trial._trial_id, "final_val_loss", 3.0)
                study.tell(trial.number, 3.0)
            except (UpdateFinishedTrialError, ValueError):
                pass  # taken over first
        else:
            take_over(study, trial, "taken over in a race")
""")


@pytest.mark.parametrize("file", ["s.db", "s.log"])
def test_a_finishing_holder_and_a_taker_never_both_win(file, tmp_path):
    """Each of 150 running trials is finished by its holder and taken over by another
    worker at the same moment: it ends complete with no retry, or lost with exactly one,
    never both and never neither."""
    study = _study(tmp_path, file)
    for _ in range(150):
        study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)})
    url = str(tmp_path / file)
    racers = [subprocess.Popen([sys.executable, "-c", _FINISHER, role, url])
              for role in ("holder", "taker")]
    assert [r.wait(timeout=300) for r in racers] == [0, 0]
    records = records_of(study)
    raced = [r for r in records if r.retry_of is None]
    retries = [r.retry_of for r in records if r.retry_of is not None]
    assert len(raced) == 150 and len(retries) == len(set(retries))
    for record in raced:
        assert record.status in (TrialStatus.COMPLETE, TrialStatus.LOST)
        assert (record.number in retries) == (record.status is TrialStatus.LOST)
        if record.status is TrialStatus.LOST:  # what the late holder wrote is not a result
            assert record.final_val_loss is None and record.completed_loss is None
    assert finished_count(study) == sum(r.status is TrialStatus.COMPLETE for r in raced)


# ---- a taken-over run: recorded nothing, said so, its retry records it -----------------------

def _claim(study) -> optuna.Trial:
    trial = claim_waiting(study)
    assert trial is not None
    return trial


BUDGET = Budget(steps=6, eval_every=2, eval_tokens=1024)  # three validation points


def _trainer(study, number: int, spec, corpus, *, take_over_at: int | None):
    """A run of three validation points during which another worker takes the trial over
    (its lease lapsed) after point ``take_over_at`` (None: after the run, before it is
    recorded)."""
    from hptransfer.training.loop import train

    def trainer(on_eval):
        seen = []

        def spy(point: CurvePoint) -> Verdict:
            if len(seen) == take_over_at:
                assert take_over(study, study.get_trials()[number], "lease lapsed (test)")
            seen.append(point)
            return on_eval(point)

        outcome = train(spec, HParams(lr=2.0**-6, batch_size=4), BUDGET, corpus,
                        on_eval=spy, threads=1)
        if take_over_at is None:
            assert take_over(study, study.get_trials()[number], "lease lapsed (test)")
        return outcome

    return trainer


@pytest.fixture
def spec_and_corpus(config, tiny_corpus):
    return config.spec_at(32), tiny_corpus


@pytest.mark.parametrize("take_over_at", [1, None])  # mid-run; after the run
def test_a_taken_over_run_records_nothing_and_says_so_once(take_over_at, spec_and_corpus,
                                                           config, tmp_path):
    spec, corpus = spec_and_corpus
    study = _study(tmp_path)
    _enqueue_lrs(study, [2.0**-6])
    trial = _claim(study)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        record = record_run(study, trial, spec=spec, hparams=HParams(lr=2.0**-6, batch_size=4),
                            config=config, corpus=corpus, threads=1,
                            trainer=_trainer(study, trial.number, spec, corpus,
                                             take_over_at=take_over_at))
    assert record is None
    said = [str(w.message) for w in caught if issubclass(w.category, leases.LeaseWarning)]
    assert len(said) == 1 and "superseded" in said[0] and f"trial {trial.number}" in said[0]
    records = {r.number: r for r in records_of(study)}
    assert records[trial.number].status is TrialStatus.LOST
    assert records[trial.number].final_val_loss is None  # nothing of the late run counts
    (retry,) = [r for r in records.values() if r.retry_of == trial.number]
    assert retry.status is TrialStatus.WAITING
    assert finished_count(study) == 0


def test_a_holder_that_failed_mid_write_leaves_a_running_trial_that_is_retried(
        spec_and_corpus, config, tmp_path):
    """A disk that fills while the outcome is written: the trial stays RUNNING (not a
    'complete' trial with half a record), and once its holder has let it go it is retried."""
    spec, corpus = spec_and_corpus
    study = _study(tmp_path)
    _enqueue_lrs(study, [2.0**-6])
    owned = OwnedTrial(study, _claim(study))
    real = owned.storage.set_trial_user_attr

    def full_disk(trial_id, key, value):
        if key == Attr.FINAL_VAL_LOSS:
            raise OSError(28, "No space left on device")
        return real(trial_id, key, value)

    owned.storage = type("Full", (), {"set_trial_user_attr": staticmethod(full_disk),
                                      "__getattr__": lambda self, n: getattr(study._storage, n)})()
    from hptransfer.training.loop import train

    outcome = train(spec, HParams(lr=2.0**-6, batch_size=4), BUDGET, corpus, threads=1)
    with pytest.raises(OSError, match="No space"):
        owned.finish(outcome)
    (record,) = records_of(study)
    assert study.get_trials()[0].user_attrs[Attr.STATUS] == "complete"  # half written
    assert record.status is TrialStatus.RUNNING  # and read as what it is
    assert reclaim_lost(study) == []  # still held
    owned.release()  # given up in its lease: any worker, in any process, takes it over now
    assert study.get_trials()[0].system_attrs["hptransfer:lease"] == leases.RELEASED
    assert reclaim_lost(study) == [0]


def test_ctrl_c_hands_the_trial_back_for_a_retry_that_runs_first(spec_and_corpus, config,
                                                                tmp_path):
    spec, corpus = spec_and_corpus
    study = _study(tmp_path)
    _enqueue_lrs(study)
    trial = _claim(study)

    def interrupted(on_eval):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        record_run(study, trial, spec=spec, hparams=HParams(lr=LRS[0], batch_size=4),
                   config=config, corpus=corpus, threads=1, trainer=interrupted)
    records = {r.number: r for r in records_of(study)}
    assert records[trial.number].status is TrialStatus.LOST
    assert records[trial.number].reason == INTERRUPTED
    retry = claim_waiting(study)  # first, before the four older waiting trials
    assert retry.user_attrs[Attr.RETRY_OF] == trial.number
    assert retry.suggest_float("lr", 1e-5, 1.0, log=True) == LRS[0]  # the same point


def test_a_resumed_width_ends_with_the_trials_of_one_never_interrupted(config, tiny_corpus,
                                                                       tmp_path):
    """Five warm-start points, three trials wanted, the first interrupted: its retry runs
    before the remaining points, so the width holds the same three LRs as a run that was
    never interrupted (before, the retry waited behind them and never ran)."""
    def finished_lrs(study):
        return sorted(r.hparams.lr for r in records_of(study) if r.finished)

    reference = _study(tmp_path, "ref.db")
    _enqueue_lrs(reference)
    work(reference, 32, config, tiny_corpus, trials=3, threads=1)
    study = _study(tmp_path, "s.db")
    _enqueue_lrs(study)
    assert OwnedTrial(study, _claim(study)).hand_back()
    work(study, 32, config, tiny_corpus, trials=3, threads=1)
    assert finished_lrs(study) == finished_lrs(reference) == LRS[:3]
    statuses = [r.status for r in records_of(study)]
    assert statuses.count(TrialStatus.LOST) == 1
    assert statuses.count(TrialStatus.WAITING) == 2  # the two points never needed, not a retry


# ---- followers and planners ------------------------------------------------------------------

def _planner_record(pid: int, beat_age: float) -> dict:
    me = leases.this_process()
    return {"host": me.host, "place": me.place, "pid": pid, "started": leases._start_time(pid),
            "token": "t", "beat": time.time() - beat_age}


def test_a_follower_waits_for_a_late_planner_and_stops_quietly_when_it_is_gone(
        config, tiny_corpus, tmp_path, monkeypatch):
    """A planner whose heartbeat is far older than the grace (a loaded node) but whose
    process runs is waited for; when its process ends, the follower stops with one line."""
    monkeypatch.setenv("HPTRANSFER_GRACE_S", "1")
    monkeypatch.setenv("HPTRANSFER_HEARTBEAT_S", "0.2")
    study = _study(tmp_path)
    planner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    write_planner(study, _planner_record(planner.pid, beat_age=3600))
    ended, caught = [], []

    def follow():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            work_ladder(study, 32, config, tiny_corpus, threads=1, planner=None)
        caught.extend(seen)
        ended.append(time.monotonic())

    follower = threading.Thread(target=follow, daemon=True)
    try:
        follower.start()
        time.sleep(3)  # three graces
        assert follower.is_alive(), "the follower gave up on a planner whose process runs"
    finally:
        planner.kill()
        planner.wait()
    killed = time.monotonic()
    follower.join(timeout=10)
    assert not follower.is_alive() and ended[0] - killed < 5
    said = [str(w.message) for w in caught if issubclass(w.category, leases.LeaseWarning)]
    assert len(said) == 1 and "has stopped" in said[0] and "Run the tune again" in said[0]


# ---- a verdict over finished runs only -------------------------------------------------------

def test_a_confirm_waits_for_runs_another_process_is_training(tiny_study_config, tiny_corpus,
                                                             tmp_path):
    """Two confirms on one storage: while the other process trains offset +1, this one
    waits for it and judges over every run (before, the first to finish judged without it
    and said CONFIRMED, while the final verdict was OPTIMUM HIGHER)."""
    from hptransfer.confirmation.runs import confirm
    from hptransfer.study.names import confirmation_study_name
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner
    from hptransfer.transfer import predict_hparams

    url = str(tmp_path / "c.db")
    tune(tiny_study_config, study="c", widths=(32, 64), trials=3, storage=url,
         corpus=tiny_corpus, runner=LocalRunner(workers=1, threads=1))
    predicted = predict_hparams(64, study="c", storage=url).hparams
    runs = optuna.create_study(study_name=confirmation_study_name("c", 64),
                               storage=open_storage(url))
    # the other process: it holds the +1 run (a live process) and finishes it in 3 s with a
    # loss far better than anything here
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    enqueue(runs, {"lr": predicted.lr * 2.0}, **{Attr.OFFSET: 1.0, Attr.ROLE: "confirmation"})
    held = claim_waiting(runs)
    held.suggest_float("lr", predicted.lr / 4, predicted.lr * 4, log=True)
    me = leases.this_process()
    for key, value in (("place", me.place), ("host", me.host), ("pid", other.pid),
                       ("started", leases._start_time(other.pid)), ("heartbeat", 0.0)):
        runs._storage.set_trial_system_attr(held._trial_id, f"hptransfer:{key}", value)
    runs._storage.set_trial_user_attr(held._trial_id, Attr.HPARAMS, HParams(
        **{**predicted.model_dump(), "lr": predicted.lr * 2.0}).model_dump_json())

    def finish_later():
        time.sleep(3)
        runs._storage.set_trial_user_attr(held._trial_id, Attr.STATUS, "complete")
        runs._storage.set_trial_user_attr(held._trial_id, Attr.FINAL_VAL_LOSS, 0.5)
        runs.tell(held, 0.5)
        other.kill()

    finisher = threading.Thread(target=finish_later)
    finisher.start()
    try:
        started = time.monotonic()
        result = confirm(64, study="c", storage=url, offsets=(0.0, 1.0), threads=1, workers=1)
    finally:
        finisher.join()
        other.kill()
        other.wait()
    assert time.monotonic() - started >= 2.5  # it waited for the other process's run
    assert all(run.status is TrialStatus.COMPLETE for run in result.runs)
    assert [run.offset for run in result.runs] == [0.0, 1.0]
    assert result.best_offset == 1.0 and result.verdict.value == "OPTIMUM HIGHER"


def test_status_of_a_storage_that_does_not_exist_is_an_error(tmp_path):
    from click.testing import CliRunner

    from hptransfer.cli import main

    missing = tmp_path / "typo" / "none.db"
    result = CliRunner().invoke(main, ["status", "--storage", str(missing)])
    assert result.exit_code == 2
    assert f"there is no storage at {missing}" in result.output
    assert not missing.exists() and not missing.parent.exists()


def test_the_lease_of_a_trial_names_this_process(tmp_path):
    study = _study(tmp_path)
    _enqueue_lrs(study, [1e-3])
    owned = OwnedTrial(study, _claim(study))
    try:
        attrs = study.get_trials()[0].system_attrs
        me = leases.this_process()
        assert (attrs["hptransfer:pid"], attrs["hptransfer:place"], attrs["hptransfer:started"]
                ) == (os.getpid(), me.place, me.started)
    finally:
        owned.release()


def test_a_trial_told_after_a_takeover_raises_taken_over(tmp_path, spec_and_corpus):
    spec, corpus = spec_and_corpus
    study = _study(tmp_path)
    _enqueue_lrs(study, [1e-3])
    owned = OwnedTrial(study, _claim(study))
    assert take_over(study, study.get_trials()[0], "test")
    from hptransfer.training.loop import train

    outcome = train(spec, HParams(lr=1e-3, batch_size=4), BUDGET, corpus, threads=1)
    with pytest.raises(TakenOver, match="superseded"):
        owned.finish(outcome)
    owned.release()
    assert study.get_trials()[0].state is TrialState.FAIL


_FAILING_PLANNER = textwrap.dedent("""
    import sys
    from hptransfer.study import ladder
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner
    from tests_config import config, corpus

    real, calls = ladder.Ladder.plan, []

    def plan(self, rows):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the planner broke")
        return real(self, rows)

    ladder.Ladder.plan = plan
    tune(config(), study="p", widths=(32,), trials=10, storage=sys.argv[1], corpus=corpus(),
         runner=LocalRunner(workers=2, threads=1))
""")


def test_a_planner_that_fails_lets_its_followers_go(tiny_study_config, text_file, tmp_path):
    """The tune (the planner) raises mid-width while a worker process follows it: the
    worker stops, and the tune ends with the planner's error instead of waiting for it
    forever (the planner's lease is released before it waits for its workers)."""
    config_json = tiny_study_config.model_copy(update={"space": tiny_study_config.space.model_copy(
        update={"lr": (2.0**-10, 2.0**-2)})}).model_dump_json()
    (tmp_path / "tests_config.py").write_text(textwrap.dedent(f"""
        from hptransfer.data.corpus import load_corpus
        from hptransfer.study.config import StudyConfig
        def config():
            return StudyConfig.model_validate_json({config_json!r})
        def corpus():
            return load_corpus({text_file!r})
    """))
    env = {**os.environ, "PYTHONPATH": str(tmp_path), "HPTRANSFER_THREADS": "1"}
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", _FAILING_PLANNER, str(tmp_path / "p.db")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode != 0 and "the planner broke" in result.stderr, result.stderr[-2000:]
    assert time.monotonic() - started < 120
    study = optuna.load_study(study_name="p.w32", storage=open_storage(str(tmp_path / "p.db")))
    planner = study.user_attrs["ladder_planner"]
    assert planner["token"] == leases.RELEASED

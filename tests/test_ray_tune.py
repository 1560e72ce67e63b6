"""`tune(runner=RayTune(...))` on a real local Ray cluster: the trials land in the Optuna record.

The cluster is the session's private one (tests/ray_cluster.py: 2 CPUs, loopback-only
machine). Trials are tiny (one block, 32-token windows, a few steps); what is tested is the
plumbing: Ray Tune runs them, Optuna's storage records them exactly as local trials, a
killed Ray worker is retried without losing the trial, and the predictor reads them.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import optuna
import pytest

from hptransfer.backends.ray_tune import RayOptions, RayTune, Scheduler
from hptransfer.budget import Budget
from hptransfer.errors import StudyError
from hptransfer.study.config import StudyConfig
from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialStatus
from hptransfer.study.search import SamplerKind
from hptransfer.study.storage import open_storage
from hptransfer.study.tune import tune
from hptransfer.study.worker import LocalRunner

pytest.importorskip("ray", reason='Ray is not installed: pip install "hptransfer[ray]"')


@pytest.fixture(autouse=True)
def home(monkeypatch, tmp_path):
    """Ray Tune's experiment folders go under $HPTRANSFER_HOME/ray: keep them in tmp."""
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))


def _ray_tune(config, url, cluster, **kwargs):
    options = RayOptions(address=cluster.address, **kwargs.pop("ray", {}))
    kwargs.setdefault("sampler", SamplerKind.TPE)
    return tune(config, storage=url, runner=RayTune(options), **kwargs)


def test_ray_trials_land_in_the_optuna_record_and_feed_the_predictor(
        tiny_study_config, tiny_corpus, ray_cluster, tmp_path):
    from hptransfer.transfer import predict_hparams

    url = f"sqlite:///{tmp_path / 'ray.db'}"
    seen = []
    result = _ray_tune(tiny_study_config, url, ray_cluster, study="onray", widths=(32, 64),
                       trials=3, corpus=tiny_corpus, on_trial=seen.append,
                       ray={"concurrent": 2})
    records = load_trials("onray", url)
    assert sorted((r.width, r.status) for r in records) == sorted(
        [(w, TrialStatus.COMPLETE) for w in (32, 64) for _ in range(3)])
    assert len(seen) == 6 and {t.status for t in seen} == {TrialStatus.COMPLETE}
    study = optuna.load_study(study_name="onray.w32", storage=open_storage(url))
    for trial in study.trials:
        # recorded like a local trial: what it trained, what came of it, its curve at tokens
        assert trial.user_attrs["backend"] == "ray"
        assert trial.value == trial.user_attrs["final_val_loss"]
        assert sorted(trial.intermediate_values) == [2 * 4 * 32, 4 * 4 * 32]
    # the warm-start grid (2^-4, 2^-6, 2^-8 centre-out) ran first, as on the local backend
    assert sorted(t.params["lr"] for t in study.trials) == [2.0**-8, 2.0**-6, 2.0**-4]
    assert result.best(32).best_loss == min(r.final_val_loss for r in records if r.width == 32)
    prediction = predict_hparams(128, study="onray", storage=url)
    assert 2.0**-8 <= prediction.hparams.lr <= 2.0**-4


def test_same_losses_as_local_trials(tiny_study_config, tiny_corpus, ray_cluster, tmp_path):
    """Same seed, same data, same thread count: a Ray trial is the local trial, bit for bit."""
    ray_url = f"sqlite:///{tmp_path / 'ray.db'}"
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    _ray_tune(tiny_study_config, ray_url, ray_cluster, study="same", widths=(32,), trials=3,
              corpus=tiny_corpus)
    tune(tiny_study_config, storage=local_url, study="same", widths=(32,), trials=3,
         corpus=tiny_corpus, runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    on_ray = {r.hparams.lr: r.final_val_loss for r in load_trials("same", ray_url)}
    local = {r.hparams.lr: r.final_val_loss for r in load_trials("same", local_url)}
    assert on_ray == local


def test_the_ladder_on_ray_makes_the_trials_of_a_local_ladder(tiny_study_config, tiny_corpus,
                                                              ray_cluster, tmp_path):
    """Round by round on the cluster (this driver plans, Ray runs each round side by side):
    the same points, seeds, steps and losses as the local ladder."""
    from hptransfer.hparams import HParams
    from hptransfer.space import SearchSpace

    config = tiny_study_config.model_copy(update={"space": SearchSpace(
        lr=(2.0**-10, 2.0**-2), base=HParams(batch_size=4))})
    ray_url = f"sqlite:///{tmp_path / 'ray.db'}"
    local_url = f"sqlite:///{tmp_path / 'local.db'}"
    run = dict(study="lad", widths=(32,), trials=4, corpus=tiny_corpus,
               sampler=SamplerKind.LADDER)
    result = _ray_tune(config, ray_url, ray_cluster, ray={"concurrent": 2}, **run)
    tune(config, storage=local_url, runner=LocalRunner(workers=1, threads=1), **run)

    def trials(url):
        return sorted((r.hparams.lr, r.seed, r.ladder, r.final_val_loss)
                      for r in load_trials("lad", url))

    assert trials(ray_url) == trials(local_url) and len(trials(ray_url)) == 4
    assert result.search[0].trials == 4  # two rounds: the bracket, then the bowl (capped)
    study = optuna.load_study(study_name="lad.w32", storage=open_storage(ray_url))
    assert {t.user_attrs["backend"] for t in study.trials} == {"ray"}


def test_the_ladder_refuses_asha(tiny_study_config, tiny_corpus, ray_cluster, tmp_path):
    url = tmp_path / "s.db"
    with pytest.raises(StudyError, match="--scheduler asha"):
        _ray_tune(tiny_study_config, str(url), ray_cluster, study="a", widths=(32,),
                  corpus=tiny_corpus, sampler=SamplerKind.LADDER,
                  ray={"scheduler": Scheduler.ASHA})
    assert not url.exists()


def _kill_first_worker(url: str, name: str, killed: list[int]) -> None:
    """Wait until a Ray worker is training a trial of ``name``, then SIGKILL it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not killed:
        try:
            study = optuna.load_study(study_name=name, storage=open_storage(url))
            for trial in study.get_trials(deepcopy=False):
                worker = trial.system_attrs.get("hptransfer:ray_worker")
                if worker and trial.state.name == "RUNNING" and trial.intermediate_values:
                    pid = int(worker.rsplit(":", 1)[1])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(trial.number)
                    return
        except KeyError:  # the study does not exist yet
            pass
        except Exception as error:  # a database hiccup must not kill the killer silently
            print(f"killer: {type(error).__name__}: {error}", file=sys.stderr)
        time.sleep(0.05)


@pytest.mark.skipif(sys.platform != "linux", reason="kills a local process by pid")
def test_a_killed_ray_worker_is_retried_and_nothing_is_lost(tiny_study_config, tiny_corpus,
                                                            ray_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'kill.db'}"
    # long enough (40 steps) that the killer catches a trial between two evaluations
    config = StudyConfig(**{**tiny_study_config.model_dump(),
                            "budget": Budget(steps=40, eval_every=2, eval_tokens=1024)})
    killed: list[int] = []
    open_storage(url)  # create the tables here, not in a race with the killer thread
    killer = threading.Thread(target=_kill_first_worker, args=(url, "killed.w32", killed))
    killer.start()
    _ray_tune(config, url, ray_cluster, study="killed", widths=(32,), trials=3,
              corpus=tiny_corpus, ray={"max_failures": 2, "concurrent": 1})
    killer.join()
    assert killed, "no Ray worker was caught mid-trial"
    records = load_trials("killed", url)
    assert len(records) == 3 and {r.status for r in records} == {TrialStatus.COMPLETE}
    # Ray retried the same Optuna trial: the killed trial completed, nothing re-enqueued
    assert killed[0] in {r.number for r in records}


def test_asha_never_stops_a_trial_before_half_its_budget(tiny_study_config, tiny_corpus,
                                                         ray_cluster, tmp_path):
    url = f"sqlite:///{tmp_path / 'asha.db'}"
    config = StudyConfig(**{**tiny_study_config.model_dump(),
                            "budget": Budget(steps=8, eval_every=2, eval_tokens=1024)})
    _ray_tune(config, url, ray_cluster, study="asha", widths=(32,), trials=5,
              corpus=tiny_corpus, ray={"scheduler": Scheduler.ASHA, "concurrent": 2})
    records = load_trials("asha", url)
    assert len(records) == 5
    half = config.tokens_per_trial() // 2
    study = optuna.load_study(study_name="asha.w32", storage=open_storage(url))
    for trial in study.trials:
        assert max(trial.intermediate_values) >= half
        if trial.user_attrs["status"] == TrialStatus.PRUNED.value:
            assert trial.state.name == "PRUNED"
            assert "ASHA" in trial.user_attrs["reason"]


def test_local_pruner_and_workers_are_refused_on_ray(tiny_study_config, tiny_corpus,
                                                     ray_cluster, text_file, tmp_path):
    from click.testing import CliRunner

    from hptransfer.cli import main
    from hptransfer.study.search import Pruning

    url = f"sqlite:///{tmp_path / 'refused.db'}"
    with pytest.raises(StudyError, match="--scheduler asha"):
        _ray_tune(tiny_study_config, url, ray_cluster, study="r", widths=(32,), trials=1,
                  corpus=tiny_corpus, pruning=Pruning.MEDIAN)
    # local worker processes are the local runner's: the command refuses them with Ray
    result = CliRunner().invoke(main, ["tune", *_tiny_flags(text_file, url), "--backend",
                                       "ray", "--workers", "2"])
    assert result.exit_code == 2 and "--concurrent" in result.output


def test_without_ray_the_error_is_the_install_line(monkeypatch, tiny_study_config,
                                                   tiny_corpus, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    url = tmp_path / "none.db"
    with pytest.raises(StudyError, match=r'pip install "hptransfer\[ray\]"'):
        tune(tiny_study_config, storage=str(url), runner=RayTune(), corpus=tiny_corpus,
             widths=(32,), trials=1, sampler=SamplerKind.TPE)
    assert not url.exists()  # refused before any storage was created


def _tiny_flags(text_file, url):
    return ["--widths", "32", "--trials", "2", "--steps", "4", "--depth", "1", "--seq-len",
            "32", "--base-width", "32", "--batch-sizes", "off", "--weight-decay-range", "off",
            "--data", text_file, "--storage", url, "--study", "cli"]


def test_cli_tune_on_ray(text_file, ray_cluster, tmp_path):
    """With the progress bar (it holds locks: Ray pickles the searcher, which must leave
    the bar behind) and then again with --json: nothing left to run, same record."""
    import json

    from click.testing import CliRunner

    from hptransfer.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    flags = ["tune", *_tiny_flags(text_file, url), "--backend", "ray", "--address",
             ray_cluster.address, "--concurrent", "2"]
    result = CliRunner().invoke(main, flags)
    assert result.exit_code == 0, result.output
    assert "Resume or top up" in result.stdout
    result = CliRunner().invoke(main, [*flags, "--json"])
    assert result.exit_code == 0, result.output
    assert [w["finished"] for w in json.loads(result.stdout)["widths"]] == [2]
    # two complete; the rest of the warm-start grid stays enqueued for a top-up, as locally
    statuses = [r.status for r in load_trials("cli", url)]
    assert statuses.count(TrialStatus.COMPLETE) == 2
    assert set(statuses) <= {TrialStatus.COMPLETE, TrialStatus.WAITING}


def test_cli_refuses_ray_flags_without_ray_backend(text_file, tmp_path):
    from click.testing import CliRunner

    from hptransfer.cli import main

    db = tmp_path / "cli.db"
    result = CliRunner().invoke(main, ["tune", *_tiny_flags(text_file, str(db)),
                                       "--concurrent", "2", "--gpus-per-trial", "0.5"])
    assert result.exit_code == 2
    assert "--gpus-per-trial, --concurrent apply only with --backend ray" in result.output
    assert not db.exists()


def test_ray_trials_log_to_the_tracker_from_the_worker(tiny_study_config, tiny_corpus,
                                                       ray_cluster, tmp_path):
    """Trials run by Ray Tune log to the tracker from the Ray worker that trains them (the
    driver logs nothing): each trial's TensorBoard run holds its recorded final loss."""
    pytest.importorskip("tensorboard", reason="pip install 'hptransfer[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from hptransfer.tracking import TrackerKind, Tracking

    url = f"sqlite:///{tmp_path / 'ray.db'}"
    folder = tmp_path / "trackers"
    _ray_tune(tiny_study_config, url, ray_cluster, study="tracked", widths=(32,), trials=2,
              corpus=tiny_corpus, ray={"concurrent": 2},
              tracking=Tracking(trackers=(TrackerKind.TENSORBOARD,), folder=str(folder)))
    records = [r for r in load_trials("tracked", url) if r.status is TrialStatus.COMPLETE]
    logged = []
    for run_dir in sorted(p for p in (folder / "runs" / "tracked").iterdir() if p.is_dir()):
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        tags = events.Tags()["scalars"]
        final = [t for t in tags if t.startswith("summary/") and "val_loss" in t]
        assert final, tags
        logged.append(round(events.Scalars(final[0])[-1].value, 4))
    assert sorted(logged) == sorted(round(r.final_val_loss, 4) for r in records)

"""Confirmation runs as Ray Train jobs: ``confirm(backend=Backend.RAY)``, ``--backend ray``.

The tiny study is tuned once (``tuned``). The slow tests confirm its prediction locally and
as Ray Train jobs of two data-parallel workers on the session's private Ray cluster
(``ray_cluster``), through the API for two offsets and then through the CLI, which trains
only the third, and compare the records. Every Ray Train job starts a controller and its
worker processes: 30-50 s a job measured on 2 busy cores, so those tests are slow. The fast
tests check the refusals, which happen before any job starts.
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import optuna
import pytest
from click.testing import CliRunner

from hptransfer.backends import Backend
from hptransfer.cli import main
from hptransfer.confirmation.runs import confirm
from hptransfer.study.names import confirmation_study_name
from hptransfer.study.schema import TrialStatus
from hptransfer.study.search import SamplerKind

OFFSETS = (-1.0, 0.0, 1.0)
API_OFFSETS = (0.0, 1.0)  # through confirm(); the CLI then adds -1
TOLERANCE = 1e-4  # relative: two workers train the same global batch as one process


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, tiny_corpus, tiny_study_config):
    """The folder holding ``local.db``, a tuned tiny study (widths 32 and 64)."""
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    folder = tmp_path_factory.mktemp("ray_train")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPTRANSFER_HOME", str(folder / "home"))
        tune(tiny_study_config, study="tiny", widths=(32, 64), trials=4,
             storage=f"sqlite:///{folder / 'local.db'}", corpus=tiny_corpus,
             runner=LocalRunner(workers=1, threads=1), sampler=SamplerKind.TPE)
    return folder


@pytest.fixture(scope="module")
def confirmed(tuned, ray_cluster):
    """(local URL, Ray URL, local confirmation, Ray confirmation by the API, CLI result)."""
    local, on_ray = tuned / "local.db", tuned / "ray.db"
    shutil.copyfile(local, on_ray)  # the same tuned study, confirmed two ways
    local, on_ray = f"sqlite:///{local}", f"sqlite:///{on_ray}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HPTRANSFER_HOME", str(tuned / "home"))
        by_local = confirm(64, study="tiny", storage=local, offsets=OFFSETS, threads=1)
        by_ray = confirm(64, study="tiny", storage=on_ray, offsets=API_OFFSETS,
                         backend=Backend.RAY, workers=2, address=ray_cluster.address)
        cli = CliRunner().invoke(main, [
            "confirm", "--target-width", "64", "--study", "tiny", "--storage", on_ray,
            "--offsets", "-1,0,1", "--backend", "ray", "--workers", "2", "--address",
            ray_cluster.address])
    return local, on_ray, by_local, by_ray, cli


def _trials(url: str) -> list:
    study = optuna.load_study(study_name=confirmation_study_name("tiny", 64), storage=url)
    return sorted(study.get_trials(), key=lambda t: t.params["lr"])


@pytest.mark.slow
def test_ray_runs_match_local_runs(confirmed):
    _, ray_url, by_local, by_ray, _ = confirmed
    assert [r.offset for r in by_ray.runs] == list(API_OFFSETS)
    assert all(r.status is TrialStatus.COMPLETE for r in by_ray.runs), by_ray.runs
    local = {r.offset: r for r in by_local.runs}
    for run in by_ray.runs:
        assert run.lr == local[run.offset].lr
        assert run.loss == pytest.approx(local[run.offset].loss, rel=TOLERANCE)
    assert by_ray.verdict is not None and by_ray.verdict.value in {
        "CONFIRMED", "OPTIMUM HIGHER", "OPTIMUM LOWER", "INCONCLUSIVE"}


@pytest.mark.slow
def test_cli_trains_the_missing_offset_on_ray_and_judges(confirmed):
    _, ray_url, by_local, _, cli = confirmed
    assert cli.exit_code == 0, cli.output
    progress = [line for line in cli.output.splitlines() if line.startswith("  offset ")]
    assert [line.split(":")[0] for line in progress] == ["  offset -1"]  # one new run
    assert f"verdict: {by_local.verdict.value}" in cli.output
    assert [t.state for t in _trials(ray_url)] == [t.state for t in _trials(confirmed[0])]


@pytest.mark.slow
def test_ray_runs_are_recorded_like_local_runs(confirmed):
    local_url, ray_url, _, _, _ = confirmed
    local, on_ray = _trials(local_url), _trials(ray_url)
    assert len(on_ray) == len(local) == len(OFFSETS)
    for mine, theirs in zip(on_ray, local, strict=True):
        assert mine.state is theirs.state
        assert mine.value == pytest.approx(theirs.value, rel=TOLERANCE)
        assert set(mine.user_attrs) == set(theirs.user_attrs)
        assert (mine.user_attrs["backend"], mine.user_attrs["workers"]) == ("ray", 2)
        assert (theirs.user_attrs["backend"], theirs.user_attrs["workers"]) == ("local", 1)
        same = ("width", "spec", "hparams", "corpus_hash", "offset", "predicted_lr", "role",
                "status", "steps", "tokens_seen", "flops")
        assert {k: mine.user_attrs[k] for k in same} == {k: theirs.user_attrs[k] for k in same}
        # the job's rank 0 wrote the live curve into the trial as it trained, like a local run
        assert list(mine.intermediate_values) == list(theirs.intermediate_values)
        assert list(mine.intermediate_values.values()) == pytest.approx(
            list(theirs.intermediate_values.values()), rel=TOLERANCE)
        assert mine.intermediate_values
    from hptransfer.confirmation.runs import load_confirmation

    assert load_confirmation("tiny", 64, ray_url).verdict is load_confirmation(
        "tiny", 64, local_url).verdict


@pytest.mark.slow
def test_a_worker_error_is_raised_as_itself(ray_cluster, text_file, tiny_study_config,
                                            tmp_path):
    """Not as Ray's WorkerGroupError: the recorded reason then names the real problem."""
    from hptransfer.backends.ray_train import RayScaling, train_on_ray
    from hptransfer.data.corpus import CorpusError
    from hptransfer.hparams import HParams
    from hptransfer.training.order import RunOrder

    run = RunOrder(spec=tiny_study_config.spec, hparams=HParams(batch_size=4),
                 budget=tiny_study_config.budget, data=text_file, corpus_hash="sha256:other")
    with pytest.raises(CorpusError, match="every Ray node must see the same data"):
        train_on_ray(run, scaling=RayScaling(workers=2), address=ray_cluster.address,
                     storage_path=tmp_path)


def test_indivisible_batch_is_refused_before_any_run(tuned):
    pytest.importorskip("ray")
    url = f"sqlite:///{tuned / 'local.db'}"
    with pytest.raises(ValueError, match="batch_size 4 cannot be split evenly over 3"):
        confirm(128, study="tiny", storage=url, offsets=OFFSETS, backend=Backend.RAY,
                workers=3)
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert confirmation_study_name("tiny", 128) not in names


def test_gpus_the_cluster_does_not_have_are_refused_before_any_run(tuned, ray_cluster,
                                                                   tiny_study_config):
    """The session's cluster has no GPU: Ray would queue a GPU job forever, so the confirm
    and the tune refuse it, naming the flag and what the nodes have."""
    from hptransfer.backends.ray_tune import RayOptions, RayTune
    from hptransfer.errors import ConfigError
    from hptransfer.study.search import Pruning

    url = f"sqlite:///{tuned / 'local.db'}"
    with pytest.raises(ConfigError, match=r"2 worker\(s\) × 1 GPU \(--gpus-per-worker\) do "
                                          r"not fit on the Ray cluster .*: its 1 node\(s\) "
                                          r"have 0 GPU"):
        confirm(128, study="tiny", storage=url, offsets=OFFSETS, backend=Backend.RAY,
                workers=2, gpus_per_worker=1, address=ray_cluster.address)
    names = {s.study_name for s in optuna.get_all_study_summaries(url)}
    assert confirmation_study_name("tiny", 128) not in names
    runner = RayTune(RayOptions(address=ray_cluster.address, gpus_per_trial=0.25))
    with pytest.raises(ConfigError, match=r"0.25 GPU \(--gpus-per-trial\) do not fit"):
        runner.prepare(url, Pruning.NONE, SamplerKind.TPE)


@pytest.fixture
def runner(tmp_path, monkeypatch) -> CliRunner:
    monkeypatch.setenv("HPTRANSFER_HOME", str(tmp_path / "home"))
    return CliRunner()


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "positive number of workers"),
    (["--cpus-per-worker", "2"], "apply only with --backend ray"),
    (["--backend", "ray", "--threads", "2"], "each worker trains with --cpus-per-worker"),
    (["--gpus-per-worker", "1"], "apply only with --backend ray"),
    (["--sharding", "fsdp"], "a local run is one process holding the whole model"),
    (["--backend", "torchrun", "--workers", "2"], "every process torchrun starts"),
    (["--backend", "torchrun"], "not started by torchrun"),
    (["--checkpoint-minutes", "-1"], "--checkpoint-minutes must be 0"),
    (["--device", "cuda"], "sees no CUDA GPU here"),
])
def test_cli_refuses_flags_that_do_not_fit(runner, tuned, flags, message):
    pytest.importorskip("ray")  # --backend ray asks for Ray before it checks the flags
    result = runner.invoke(main, ["confirm", "--target-width", "64", "--study", "tiny",
                                  "--storage", f"sqlite:///{tuned / 'local.db'}", *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_without_ray_names_the_install_line(runner, tuned, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    result = runner.invoke(main, ["confirm", "--target-width", "64", "--study", "tiny",
                                  "--storage", f"sqlite:///{tuned / 'local.db'}",
                                  "--backend", "ray"])
    assert result.exit_code == 2, result.output
    assert 'pip install "hptransfer[ray]"' in result.output


def test_importing_the_ray_train_module_does_not_import_ray():
    code = ("import sys, hptransfer.backends.ray_train, hptransfer.confirmation.runs, "
            "hptransfer.cli; sys.exit('ray' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0

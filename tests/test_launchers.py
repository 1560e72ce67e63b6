"""The launchers of confirmation runs (hptransfer.confirmation.launchers): each one's checks
refuse what it cannot train with the messages ``confirm`` gives, before any run; a local
launcher trains a tiny run; a Ray Train launcher hands a run to ``train_on_ray`` as the
confirm did; every launcher has the protocol's members. No Ray cluster is needed."""

from __future__ import annotations

import pytest

from hptransfer.backends import Backend
from hptransfer.confirmation.launchers import (
    LocalLauncher,
    RayTrainLauncher,
    TorchrunLauncher,
    TrialRef,
    make_launcher,
)
from hptransfer.errors import ConfigError
from hptransfer.hparams import HParams
from hptransfer.training.execution import Checkpointing, Execution, Sharding

OPTIONS = dict(threads=None, workers="auto", width=64, address=None, cpus_per_worker=1,
               gpus_per_worker=0.0, device=None, execution=Execution())


def _options(**changes):
    return {**OPTIONS, **changes}


def _torchrun(ranks: int) -> TorchrunLauncher:
    """A torchrun launcher as rank 0 of ``ranks`` holds it once joined (no process group:
    its checks and members need none)."""
    from hptransfer.confirmation.torchrun import TorchrunJob
    from hptransfer.training.ranks import Ranks

    return TorchrunLauncher(job=TorchrunJob(ranks=Ranks(0, ranks), device="cpu", threads=2))


def _ray(**scaling) -> RayTrainLauncher:
    from hptransfer.backends.ray_train import RayScaling

    return RayTrainLauncher(scaling=RayScaling(**scaling))


def _ref(tiny_corpus, tracking=None) -> TrialRef:
    from hptransfer.spec import ModelSpec
    from hptransfer.tracking import RunInfo

    info = RunInfo(study="tiny", trial=3, spec=ModelSpec(width=32, depth=1, head_dim=16,
                                                         seq_len=32, base_width=32),
                   hparams=HParams(batch_size=4), seed=0)
    return TrialRef(name="tiny.confirm.w64.t3", trial_id=7, info=info, tracking=tracking,
                    corpus=tiny_corpus)


@pytest.mark.parametrize("launcher, backend, workers", [
    (LocalLauncher(threads=1), Backend.LOCAL, 1),
    (_torchrun(2), Backend.TORCHRUN, 2),
    (_ray(workers=3, cpus_per_worker=2), Backend.RAY, 3),
])
def test_every_launcher_has_the_protocol_members(launcher, backend, workers):
    """What a confirm reads of any launcher, and what its runs' trials record."""
    assert launcher.backend is backend
    assert launcher.workers == workers
    assert launcher.threads >= 1 and launcher.processes >= 1
    assert isinstance(launcher.auto, bool) and isinstance(launcher.execution, Execution)
    for method in ("lead", "check", "trackers", "run"):
        assert callable(getattr(launcher, method))


def test_options_choose_the_launcher():
    local = make_launcher(Backend.LOCAL, **_options(workers=3, threads=2))
    assert local == LocalLauncher(threads=2, processes=3)
    auto = make_launcher(Backend.LOCAL, **_options(threads=1))
    assert isinstance(auto, LocalLauncher) and auto.auto and auto.threads == 1
    torchrun = make_launcher(Backend.TORCHRUN, **_options(threads=4, device="cuda"))
    assert torchrun == TorchrunLauncher(device="cuda", asked_threads=4)


@pytest.mark.parametrize("backend, changes, message", [
    (Backend.LOCAL, dict(workers=0), "workers must be a positive number or 'auto'"),
    (Backend.LOCAL, dict(cpus_per_worker=2), "apply only with --backend ray"),
    (Backend.TORCHRUN, dict(address="auto"), "apply only with --backend ray"),
    (Backend.LOCAL, dict(device="CPU"), "is not one hptransfer trains on"),
    (Backend.LOCAL, dict(execution=Execution(sharding=Sharding.FSDP)),
     "a local run is one process holding the whole model"),
    (Backend.TORCHRUN, dict(workers=2), "--workers does not apply with --backend torchrun"),
])
def test_options_that_do_not_fit_are_refused(backend, changes, message):
    with pytest.raises(ConfigError, match=message):
        make_launcher(backend, **_options(**changes))


def test_a_fractional_gpu_share_for_two_nccl_workers_is_refused():
    """Ray could put both ranks on one card, and NCCL refuses that (issue 24)."""
    pytest.importorskip("ray")
    with pytest.raises(ConfigError, match="NCCL cannot run two ranks of one job on the same "
                                          "GPU"):
        make_launcher(Backend.RAY, **_options(workers=2, gpus_per_worker=0.5))
    shared = make_launcher(Backend.RAY, **_options(workers=1, gpus_per_worker=0.5))
    assert isinstance(shared, RayTrainLauncher) and shared.scaling.gpus_per_worker == 0.5
    with pytest.raises(ConfigError, match="--threads and --device set a local run's"):
        make_launcher(Backend.RAY, **_options(threads=2))


@pytest.mark.parametrize("backend", [Backend.LOCAL, Backend.TORCHRUN, Backend.RAY])
def test_an_unwritable_checkpoint_folder_is_refused_where_this_process_writes(backend,
                                                                            tmp_path):
    """Refused for a local or torchrun launcher (this machine writes the checkpoints); a
    Ray job's ranks write on their own nodes, which this process cannot see."""
    blocked = tmp_path / "a file"
    blocked.write_text("")
    execution = Execution(checkpoint=Checkpointing(folder=blocked / "ck", every_minutes=10))
    if backend is Backend.RAY:
        pytest.importorskip("ray")
        make_launcher(backend, **_options(execution=execution))
        return
    with pytest.raises(ConfigError, match="cannot write checkpoints in"):
        make_launcher(backend, **_options(execution=execution))


def test_local_check_refuses_a_target_that_cannot_fit(monkeypatch, tiny_spec):
    import hptransfer.training.device as device

    LocalLauncher(threads=1).check(tiny_spec, HParams(batch_size=4), None)
    monkeypatch.setattr(device, "available_memory", lambda on: 1024)
    with pytest.raises(ConfigError, match=f"the target model at width {tiny_spec.width} has "
                                          f"[0-9,]+ parameters"):
        LocalLauncher(threads=1).check(tiny_spec, HParams(batch_size=4), None)


@pytest.mark.parametrize("launcher", [_torchrun(3), _ray(workers=3)])
def test_an_uneven_batch_split_is_refused_before_any_run(launcher, tiny_spec):
    """(The Ray launcher refuses it before connecting to any cluster.)"""
    with pytest.raises(ConfigError, match="batch_size 4 cannot be split evenly over 3"):
        launcher.check(tiny_spec, HParams(batch_size=4), None)


def test_torchrun_checks_its_split_and_needs_its_job(tiny_spec):
    assert _torchrun(2).check(tiny_spec, HParams(batch_size=4), None).workers == 2
    with pytest.raises(RuntimeError, match="call it inside lead"):
        _ = TorchrunLauncher().workers


def test_torchrun_lead_outside_torchrun_says_how_to_start_it(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="was not started by torchrun"):
        TorchrunLauncher().lead(lambda ready: pytest.fail("led without a job"))


def test_who_logs_a_run():
    """This process logs local and torchrun runs (it trains them, or rank 0 of them); a Ray
    job's rank 0 logs its own run."""
    from hptransfer.tracking import Tracking

    tracking = Tracking()
    assert LocalLauncher(threads=1).trackers(tracking) is tracking
    assert _torchrun(2).trackers(tracking) is tracking
    assert _ray().trackers(tracking) is None


def _order(tiny_study_config):
    from hptransfer.training.order import RunOrder

    config = tiny_study_config
    return RunOrder(spec=config.spec, hparams=HParams(batch_size=4, lr=2.0**-6),
                    budget=config.budget, seed=1, data=config.data,
                    corpus_hash=config.corpus_hash)


def test_local_run_trains_the_order_here(tiny_study_config, tiny_corpus):
    """A RunRecord comes back, ``on_eval`` sees every validation point, and the record is
    the one ``train`` returns for the same inputs."""
    from hptransfer.record import RunRecord
    from hptransfer.training.loop import train

    order = _order(tiny_study_config)
    points = []
    record = LocalLauncher(threads=1).run(order, points.append, _ref(tiny_corpus))
    assert isinstance(record, RunRecord)
    assert [p.tokens for p in points] == [p.tokens for p in record.val_curve] and points
    direct = train(order.spec, order.hparams, order.budget, tiny_corpus, seed=1, threads=1)
    assert record.final_val_loss == direct.final_val_loss


def test_ray_run_hands_the_trial_to_the_job(monkeypatch, tiny_study_config, tiny_corpus):
    """The job is named after the trial; its rank 0 writes the live curve into the trial
    (when the storage has a URL) and logs the run to the trackers; nothing needs a cluster
    here (``train_on_ray`` is stood in for)."""
    import hptransfer.backends.ray_train as ray_train
    from hptransfer.tracking import Tracking

    calls = []
    monkeypatch.setattr(ray_train, "train_on_ray", lambda order, **kw: calls.append(kw) or kw)
    order = _order(tiny_study_config)
    tracking = Tracking()
    launcher = _ray(workers=2, cpus_per_worker=2)
    launcher.run(order, None, _ref(tiny_corpus))
    RayTrainLauncher(scaling=launcher.scaling, address="auto", storage_url="sqlite:///s.db"
                     ).run(order, None, _ref(tiny_corpus, tracking))
    bare, full = calls
    assert bare["name"] == "tiny.confirm.w64.t3" and bare["scaling"] == launcher.scaling
    assert bare["progress"] is None and bare["tracked"] is None
    assert full["progress"] == ray_train.Progress(storage="sqlite:///s.db", trial_id=7)
    assert full["tracked"][0] is tracking and full["tracked"][1].trial == 3
    assert full["address"] == "auto"

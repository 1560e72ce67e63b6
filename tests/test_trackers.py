"""Experiment trackers (hptransfer.tracking): a tiny tune and a tiny confirm logged to W&B
(offline), MLflow (a local SQLite store) and TensorBoard, read back with each library's own
reader and compared value by value with the Optuna record; and a tracker that cannot log
(not installed, its server unreachable, a full disk) is off after one warning while the runs
go on and the record is complete."""

from __future__ import annotations

import errno
import importlib.util
import json
import struct
import warnings
from pathlib import Path

import pytest
from tiny import TINY_FLAGS, lr_only_toml, run_cli

from hptransfer.record import Status
from hptransfer.study.search import SamplerKind
from hptransfer.study.storage import open_storage
from hptransfer.tracking import TrackerKind, TrackerWarning, Tracking
from hptransfer.tracking import run as tracking_run

LIBRARY = {TrackerKind.WANDB: "wandb", TrackerKind.MLFLOW: "mlflow",
           TrackerKind.TENSORBOARD: "tensorboard"}
INSTALLED = tuple(k for k, module in LIBRARY.items() if importlib.util.find_spec(module))
OFFSETS = (-1.0, 0.0, 1.0)


def needs(kind: TrackerKind):
    return pytest.mark.skipif(kind not in INSTALLED, reason=(
        f"{LIBRARY[kind]} is not installed: pip install 'hptransfer[{kind.value}]'"))


@pytest.fixture(autouse=True)
def _fresh_trackers():
    """A tracker that failed stays off for the rest of its process: not across tests."""
    tracking_run._failed.clear()
    yield
    tracking_run._failed.clear()


def _offline(patch: pytest.MonkeyPatch) -> None:
    patch.setenv("WANDB_MODE", "offline")
    patch.setenv("WANDB_SILENT", "true")
    patch.delenv("WANDB_PROJECT", raising=False)
    patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    patch.delenv("HPTRANSFER_TRACKER", raising=False)


# ---- a tiny tune and confirm, logged to every installed tracker --------------------------

@pytest.fixture(scope="module")
def logged(tmp_path_factory, tiny_corpus, tiny_study_config):
    """(tracker folder, the Optuna record of every run by (role, width, trial), the
    confirmation)."""
    import optuna

    from hptransfer.confirmation.runs import confirm
    from hptransfer.study.names import confirmation_study_name
    from hptransfer.study.records import load_trials
    from hptransfer.study.schema import trial_record
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner

    if not INSTALLED:
        pytest.skip("none of wandb, mlflow, tensorboard is installed: pip install "
                    "'hptransfer[wandb,mlflow,tensorboard]'")
    folder = tmp_path_factory.mktemp("trackers")
    url = f"sqlite:///{folder / 'studies.db'}"
    tracking = Tracking(trackers=INSTALLED, folder=str(folder / "trackers"))
    with pytest.MonkeyPatch.context() as patch, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _offline(patch)
        patch.setenv("HPTRANSFER_HOME", str(folder / "home"))
        tune(tiny_study_config, study="tiny", widths=(32, 64), trials=3, storage=url,
             corpus=tiny_corpus, runner=LocalRunner(workers=1, threads=1),
             sampler=SamplerKind.TPE, tracking=tracking)
        confirmation = confirm(64, study="tiny", storage=url, offsets=OFFSETS, threads=1,
                               workers=1, tracking=tracking)
    said = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert not said, said
    records = {("trial", r.width, r.number): (r, {}) for r in load_trials("tiny", url)}
    name = confirmation_study_name("tiny", 64)
    for trial in optuna.load_study(study_name=name, storage=url).get_trials():
        records[("confirmation", 64, trial.number)] = (trial_record(name, trial),
                                                       trial.user_attrs)
    return Path(tracking.folder), records, confirmation


class Logged:
    """One run as a tracker holds it."""

    def __init__(self, params: dict, val: list, train: list, summary: dict) -> None:
        self.params, self.val, self.train, self.summary = params, val, train, summary

    @property
    def key(self):
        return self.params["role"], int(self.params["width"]), int(self.params.get("trial", -1))


def _compare(runs: list[Logged], records: dict, confirmation, *, rel: float = 0.0) -> None:
    """Every run of the record is in the tracker once, with the record's values; and the
    verdict beside them."""
    close = (lambda x: pytest.approx(x, rel=rel)) if rel else (lambda x: x)
    verdicts = [r for r in runs if r.params["role"] == "verdict"]
    runs = [r for r in runs if r.params["role"] != "verdict"]
    assert sorted(r.key for r in runs) == sorted(records)
    statuses = set()
    for run in runs:
        record, attrs = records[run.key]
        hparams = record.hparams
        for field in ("lr", "weight_decay", "batch_size", "embedding_lr_mult", "warmup_fraction",
                      "grad_clip"):
            assert float(run.params[field]) == getattr(hparams, field), field
        assert run.params["weight_decay_rule"] == hparams.weight_decay_rule.value
        assert run.params["study"] == "tiny" and run.params["parametrization"] == "mup"
        assert int(run.params["depth"]) == 1 and int(run.params["seed"]) == record.seed
        assert run.summary["status"] == record.status.value
        statuses.add(record.status.value)
        assert run.val == [(p.step, close(p.loss)) for p in record.val_curve]
        if record.final_val_loss is not None:
            assert run.summary["final_val_loss"] == close(record.final_val_loss)
        assert run.summary["tokens_per_s"] == close(record.tokens_per_s)
        assert run.train and all(step > 0 for step, _ in run.train)
        if run.key[0] == "confirmation":
            assert float(run.params["offset"]) == attrs["offset"]
            assert float(run.params["predicted_lr"]) == attrs["predicted_lr"]
    assert "complete" in statuses
    (verdict,) = verdicts
    assert verdict.summary["verdict"] == confirmation.verdict.value
    assert verdict.summary["predicted_lr"] == close(confirmation.predicted_lr)
    for run in confirmation.runs:
        if run.loss is not None:
            assert verdict.summary[f"val_loss/offset {run.offset:g}"] == close(run.loss)


# -- W&B: its offline run files, read record by record with W&B's own protobuf schema --------

def _wandb_records(path: Path):
    """The records of a ``.wandb`` file. wandb 0.31 dropped its Python reader
    (wandb.sdk.internal.datastore: the Go core writes these files now), so this reads the
    framing that reader read (a LevelDB-style log of 32 KiB blocks: a 7-byte file header,
    then records of a 7-byte header, checksum, length, type) and parses each record with
    ``wandb.proto.wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, _ = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B" and magic == 0xBEE1, "not a W&B transaction log"
    position, pieces = 7, b""
    while position + 7 <= len(data):
        left = 32768 - position % 32768
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0 and length == 0:
            position += left
            continue
        pieces += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # FULL, or LAST of FIRST, MIDDLE…
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pieces)
            pieces = b""
            yield record


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # W&B writes some keys as a path


def _read_wandb(folder: Path) -> list[Logged]:
    runs = []
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        params, summary, val, train, group = {}, {}, [], [], None
        for record in _wandb_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                group = record.run.run_group
                params.update({i.key: json.loads(i.value_json) for i in record.run.config.update
                               if not i.key.startswith("_")})
            elif kind == "history":
                row = {_key(i): json.loads(i.value_json) for i in record.history.item}
                if "val_loss" in row:
                    val.append((row["step"], row["val_loss"]))
                if "train_loss" in row:
                    train.append((row["step"], row["train_loss"]))
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        assert group == "tiny"
        runs.append(Logged(params, val, train, summary))
    return runs


@needs(TrackerKind.WANDB)
def test_wandb_offline_runs_hold_the_record(logged):
    folder, records, confirmation = logged
    _compare(_read_wandb(folder), records, confirmation)


# -- MLflow: MlflowClient on the SQLite store ---------------------------------------------

@needs(TrackerKind.MLFLOW)
def test_mlflow_runs_hold_the_record(logged):
    from mlflow.tracking import MlflowClient

    folder, records, confirmation = logged
    client = MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tiny")  # the study is the experiment
    runs = []
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        tags, metrics = run.data.tags, run.data.metrics
        summary = {k.removeprefix("hptransfer."): v for k, v in tags.items()
                   if k.startswith("hptransfer.")}
        summary.update(metrics)
        history = {key: [(m.step, m.value) for m in sorted(
            client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
            for key in ("val_loss", "train_loss")}
        runs.append(Logged(dict(run.data.params), history["val_loss"], history["train_loss"],
                           summary))
        expected = {"error": "FAILED", "lost": "KILLED"}.get(summary["status"], "FINISHED")
        assert run.info.status == expected
    _compare(runs, records, confirmation)


# -- TensorBoard: the tensorboard package's EventAccumulator ----------------------------------

@needs(TrackerKind.TENSORBOARD)
def test_tensorboard_event_files_hold_the_record(logged):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    folder, records, confirmation = logged
    runs = []
    study = folder / "runs" / "tiny"  # the study is the run folder
    for run_dir in sorted(p for p in study.iterdir() if p.is_dir()):
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
        events.Reload()
        tags = events.Tags()

        def text(tag, events=events):
            return events.Tensors(f"{tag}/text_summary")[0].tensor_proto.string_val[0].decode()

        def scalars(tag, events=events, tags=tags):
            return ([(e.step, e.value) for e in events.Scalars(tag)]
                    if tag in tags["scalars"] else [])

        summary = {tag.removeprefix("summary/"): events.Scalars(tag)[-1].value
                   for tag in tags["scalars"] if tag.startswith("summary/")}
        summary["status"] = text("status")
        if "verdict/text_summary" in tags["tensors"]:
            summary["verdict"] = text("verdict")
        params = json.loads(text("params"))
        # the HPARAMS tab holds the same parameters
        start = plugin_data_pb2.HParamsPluginData.FromString(events.PluginTagToContent(
            "hparams")["_hparams_/session_start_info"]).session_start_info.hparams
        assert start["study"].string_value == params["study"]
        assert start["width"].number_value == params["width"]
        if "lr" in params:
            assert start["lr"].number_value == params["lr"]
        runs.append(Logged(params, scalars("val_loss"), scalars("train_loss"), summary))
    # event files hold float32 scalars
    _compare(runs, records, confirmation, rel=1e-6)


# ---- a tracker that cannot log ----------------------------------------------------------

def _tune_args(tmp_path: Path, text_file: str, *extra: str) -> list[str]:
    return ["tune", "--widths", "32", "--trials", "2", "--sampler", "tpe", "--steps", "2",
            *TINY_FLAGS, "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off",
            "--batch-sizes", "off", "--data", text_file, "--storage",
            str(tmp_path / "s.db"), "--study", "s", "--threads", "1", "--workers", "1",
            "--tracker-dir", str(tmp_path / "trackers"), *extra]


def _complete(tmp_path: Path, trials: int = 2) -> None:
    """The Optuna record holds every trial, finished."""
    from hptransfer.study.records import load_trials

    finished = [r for r in load_trials("s", open_storage(str(tmp_path / "s.db"))) if r.finished]
    assert len(finished) == trials and all(r.status.value == "complete" for r in finished)


@pytest.mark.parametrize("args, env, message", [
    (["--tracker", "comet"], {}, "'comet' is not one of 'wandb', 'mlflow', 'tensorboard'"),
    ([], {"HPTRANSFER_TRACKER": "wandb,comet"}, "unknown tracker(s) 'comet'"),
])
def test_an_unknown_tracker_is_a_usage_error(args, env, message, tmp_path, text_file,
                                             monkeypatch):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = run_cli(_tune_args(tmp_path, text_file, *args), code=2)
    assert message in result.output
    assert not (tmp_path / "s.db").exists()  # refused before anything ran


def test_an_unknown_tracker_in_the_config_file_is_a_usage_error(tmp_path, text_file):
    config = lr_only_toml(tmp_path / "t.toml", steps=2)
    config.write_text(config.read_text() + '\n[tune]\ntracker = ["neptune"]\n')
    result = run_cli(["tune", "--config", str(config), "--widths", "32", "--data", text_file,
                      "--storage", str(tmp_path / "s.db")], code=2)
    assert "--tracker" in result.output and "neptune" in result.output


def test_a_missing_library_warns_once_with_the_install_line(tmp_path, text_file, monkeypatch):
    import sys

    _offline(monkeypatch)
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    monkeypatch.delitem(sys.modules, "hptransfer.tracking.wandb", raising=False)
    result = run_cli(_tune_args(tmp_path, text_file, "--tracker", "wandb"), code=0)
    warnings_ = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1, result.output
    assert "tracker wandb is off" in warnings_[0]
    assert "pip install 'hptransfer[wandb]'" in warnings_[0]
    _complete(tmp_path)


@needs(TrackerKind.MLFLOW)
def test_an_unreachable_mlflow_server_warns_once_and_the_tune_completes(tmp_path, text_file,
                                                                         monkeypatch):
    _offline(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    result = run_cli(_tune_args(tmp_path, text_file, "--tracker", "mlflow"), code=0)
    warnings_ = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings_) == 1 and "tracker mlflow is off" in warnings_[0], result.output
    _complete(tmp_path)


@needs(TrackerKind.TENSORBOARD)
def test_a_full_disk_mid_run_warns_once_and_the_runs_go_on(tmp_path, tiny_corpus,
                                                           tiny_study_config, monkeypatch):
    """The tracker breaks after the runs started (the disk filled): one warning, it is off
    for the rest of the process, every trial is recorded."""
    from hptransfer.study.records import load_trials
    from hptransfer.study.tune import tune
    from hptransfer.study.worker import LocalRunner
    from hptransfer.tracking.tensorboard import TensorBoardRun

    _offline(monkeypatch)

    def full(self, step, metrics):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TensorBoardRun, "log", full)
    url = f"sqlite:///{tmp_path / 's.db'}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tune(tiny_study_config, study="s", widths=(32,), trials=2, storage=url,
             corpus=tiny_corpus, runner=LocalRunner(workers=1, threads=1),
             sampler=SamplerKind.TPE,
             tracking=Tracking(trackers=(TrackerKind.TENSORBOARD,), folder=str(tmp_path)))
    said = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(said) == 1 and "No space left on device" in said[0], said
    finished = [r for r in load_trials("s", url) if r.finished]
    assert len(finished) == 2 and all(r.status.value in [s.value for s in Status]
                                      for r in finished)


@needs(TrackerKind.TENSORBOARD)
def test_the_config_file_key_and_the_environment_choose_trackers(tmp_path, text_file,
                                                                 monkeypatch):
    """``[tune] tracker`` and ``tracker_dir`` in a config file; flags win over it, and it
    over ``$HPTRANSFER_TRACKER``."""
    _offline(monkeypatch)
    monkeypatch.setenv("HPTRANSFER_TRACKER", "wandb")  # the file's key wins: no W&B run
    config = lr_only_toml(tmp_path / "t.toml", steps=2)
    config.write_text(config.read_text() + f'\n[tune]\ntracker = ["tensorboard"]\n'
                                           f'tracker_dir = "{tmp_path / "tb"}"\n')
    run_cli(["tune", "--config", str(config), "--widths", "32", "--trials", "2",
             "--sampler", "tpe", "--data", text_file, "--storage", str(tmp_path / "s.db"),
             "--study", "s", "--workers", "1", "--threads", "1"], code=0)
    assert len(list((tmp_path / "tb" / "runs" / "s").iterdir())) == 2
    assert not (tmp_path / "tb" / "wandb").exists()


def test_the_environment_is_the_default(monkeypatch):
    from hptransfer.tracking import resolve

    monkeypatch.setenv("HPTRANSFER_TRACKER", "mlflow, tensorboard")
    assert resolve().trackers == (TrackerKind.MLFLOW, TrackerKind.TENSORBOARD)
    assert resolve(("wandb",)).trackers == (TrackerKind.WANDB,)
    monkeypatch.setenv("HPTRANSFER_TRACKER", "")
    assert resolve().trackers == ()


def test_run_names_show_the_predicted_run():
    from hptransfer.hparams import HParams
    from hptransfer.spec import ModelSpec
    from hptransfer.tracking import RunInfo, RunRole

    spec = ModelSpec(width=128, depth=2, base_width=32)
    info = RunInfo(study="proxy", role=RunRole.CONFIRMATION, trial=2, spec=spec,
                   hparams=HParams(lr=2**-5), offset=0.0, predicted_lr=2**-5)
    assert info.name == "proxy w128 confirm +0 (predicted) #2"
    assert info.slug == "confirm-w128-t2-offset+0-predicted"
    trial = RunInfo(study="proxy", trial=7, spec=spec, hparams=HParams(lr=2**-5))
    assert trial.name == "proxy w128 #7 lr 2^-5.00" and trial.slug == "w128-t7"
    assert trial.params()["embedding_lr_mult"] == 1.0 and "offset" not in trial.params()

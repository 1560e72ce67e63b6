"""The cluster side of the Ray backend: integrations/ray and the Jobs API.

The cluster files (``ray up`` config, KubeRay RayJob) parse and hold what they must; the
pipeline script runs its three steps in order and stops at the first failure; a job submitted
through the Jobs API to a real local cluster (the ``ray_cluster`` fixture) runs a tiny tune
whose trials land in the Optuna storage; a SQLite file is refused where Ray workers may run
on other machines.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

from hptransfer.errors import StudyError
from hptransfer.study.records import load_trials

RAY_DIR = Path(__file__).resolve().parent.parent / "integrations" / "ray"
TINY_TOML = "[hparams]\nbatch_size = 4\n\n[budget]\neval_every = 2\neval_tokens = 1024\n"


def _submit_module():
    spec = importlib.util.spec_from_file_location("hptransfer_ray_submit", RAY_DIR / "submit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _yaml(name: str) -> dict:
    return yaml.safe_load((RAY_DIR / name).read_text())


# --- the cluster files --------------------------------------------------------------------


def test_rayjob_manifest_runs_the_pipeline_on_a_gpu_cluster():
    job = _yaml("rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "pipeline.sh" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])  # a YAML document inside YAML
    assert any(p.startswith("hptransfer[ray,postgres]") for p in runtime_env["pip"])
    assert {"WIDTHS", "TARGET_WIDTH", "GPUS_PER_TRIAL"} <= set(runtime_env["env_vars"])

    cluster = spec["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    (head_container,) = head["containers"]
    storage = {e["name"]: e for e in head_container["env"]}["HPTRANSFER_STORAGE"]
    assert "secretKeyRef" in storage["valueFrom"]  # the database URL comes from a Secret
    mount = head_container["volumeMounts"][0]["mountPath"]
    assert spec["entrypoint"].split()[-1].startswith(mount)  # the script is on the head pod
    (gpu_group,) = cluster["workerGroupSpecs"]
    (worker,) = gpu_group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    assert worker["image"] == head_container["image"]  # one Python and Ray everywhere


def test_ray_up_config_has_a_head_and_gpu_workers_installing_hptransfer():
    config = _yaml("cluster.yaml")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = [t for name, t in types.items() if name != config["head_node_type"]]
    assert any(t["resources"].get("GPU", 0) >= 1 and t["max_workers"] >= 1 for t in workers)
    assert config["provider"]["type"]
    setup = "\n".join(config["setup_commands"])
    assert "hptransfer[ray,postgres]" in setup
    assert "torch" in setup and "download.pytorch.org/whl/cu" in setup  # a CUDA build


# --- pipeline.sh and submit.py, without a cluster -----------------------------------------

FAKE_CLI = """\
#!/usr/bin/env bash
echo "$*" >> "$CALLS"
[[ "$1" == "$FAIL_AT" ]] && exit 3
[[ "$1" == predict ]] && echo '{"target_width": 1024}'
exit 0
"""


def _run_pipeline(tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str]]:
    fake = tmp_path / "fake-hptransfer"
    fake.write_text(FAKE_CLI)
    fake.chmod(0o755)
    calls = tmp_path / "calls.txt"
    calls.touch()
    environ = {k: v for k, v in os.environ.items() if k != "HPTRANSFER_STORAGE"}
    environ |= {"HPTRANSFER": str(fake), "CALLS": str(calls), "OUT_DIR": str(tmp_path),
                "FAIL_AT": "", **env}
    done = subprocess.run(["bash", str(RAY_DIR / "pipeline.sh"), *args], env=environ,
                          capture_output=True, text=True, timeout=30)
    return done.returncode, calls.read_text().splitlines()


def test_pipeline_runs_tune_predict_confirm_into_one_storage(tmp_path):
    url = "postgresql://u:p@db:5432/hp"
    code, calls = _run_pipeline(tmp_path, url, WIDTHS="32,64", TARGET_WIDTH="256",
                                GPUS_PER_TRIAL="0.25", TUNE_ARGS="--depth 2 --seq-len 64")
    assert code == 0
    assert [c.split()[0] for c in calls] == ["tune", "predict", "confirm"]
    tune, predict, confirm = (shlex.split(c) for c in calls)
    for step in (tune, predict, confirm):
        assert step[step.index("--storage") + 1] == url
        assert step[step.index("--study") + 1] == "proxy"
    assert tune[tune.index("--backend") + 1] == "ray"
    assert tune[tune.index("--gpus-per-trial") + 1] == "0.25"
    assert tune[tune.index("--widths") + 1] == "32,64"
    assert tune[-4:] == ["--depth", "2", "--seq-len", "64"]
    assert predict[predict.index("--target-width") + 1] == "256" and "--json" in predict
    assert (tmp_path / "prediction.json").read_text().strip() == '{"target_width": 1024}'
    assert confirm[confirm.index("--backend") + 1] == "ray"
    assert confirm[confirm.index("--workers") + 1] == "2"


def test_pipeline_stops_at_the_first_failing_step(tmp_path):
    code, calls = _run_pipeline(tmp_path, FAIL_AT="predict",
                                HPTRANSFER_STORAGE="postgresql://u:p@db/hp")
    assert code == 3  # the failing step's status
    assert [c.split()[0] for c in calls] == ["tune", "predict"]


def test_pipeline_without_a_storage_says_how_to_give_one(tmp_path):
    code, calls = _run_pipeline(tmp_path)
    assert code == 2 and calls == []


def test_submit_installs_hptransfer_and_uploads_the_pipeline():
    submit = _submit_module()
    entrypoint, runtime_env = submit.job_spec({"WIDTHS": "64,128"})
    assert entrypoint == "bash pipeline.sh"
    assert Path(runtime_env["working_dir"]) == RAY_DIR
    assert runtime_env["pip"] == ["hptransfer[ray,postgres]"]
    assert runtime_env["env_vars"] == {"WIDTHS": "64,128"}

    _, preinstalled = submit.job_spec({}, install=submit.Install.NONE)
    assert "pip" not in preinstalled
    entrypoint, checkout = submit.job_spec({}, install=submit.Install.CHECKOUT)
    assert (Path(checkout["working_dir"]) / entrypoint.split()[-1]).is_file()
    assert checkout["env_vars"]["HPTRANSFER"] == "python -m hptransfer.cli"
    assert any(p.startswith("optuna") for p in checkout["pip"])
    assert not any(p.startswith("hptransfer") for p in checkout["pip"])


# --- a job on a real cluster --------------------------------------------------------------


@pytest.mark.parametrize("backend", ["local", pytest.param("ray", marks=pytest.mark.slow)])
def test_job_submitted_through_the_jobs_api_tunes_into_the_storage(ray_cluster, tmp_path,
                                                                    text_file, backend):
    """Submitted as a user would (JobSubmissionClient on the dashboard), run to completion,
    its trials readable from the storage afterwards. The job runs in this test's Python:
    the cluster was started from it, and nothing is pip-installed (no network in CI).
    With ``--backend ray`` the job's tune joins the job's cluster (RAY_ADDRESS) and runs the
    trials as Ray Tune trials (30–45 s here, hence slow); the local backend trains them
    in the job's driver (about 15 s), so the Jobs API is covered by the fast suite too."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    url = f"sqlite:///{tmp_path / 'studies.db'}"  # one node: a file storage is allowed
    tune = [sys.executable, "-m", "hptransfer.cli", "tune", "--backend", backend,
            "--config", str(config), "--data", text_file, "--widths", "32", "--depth", "1",
            "--seq-len", "32", "--head-dim", "16", "--base-width", "32",
            "--lr-range", "2^-8,2^-4", "--weight-decay-range", "off", "--batch-sizes", "off",
            "--steps", "4", "--trials", "2", "--study", "job", "--storage", url, "--json"]
    # HPTRANSFER_* variables go on the command line, not in the job's env_vars: the driver
    # forwards them to its workers (hptransfer.backends.cluster.connect), and Ray refuses a key set
    # by both the job and the driver. Other keys merge (as pipeline.sh's settings do).
    env = ["env", f"HPTRANSFER_HOME={tmp_path / 'home'}", "HPTRANSFER_THREADS=1"]
    submit = _submit_module()
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    job_id = submit.submit_job(client, entrypoint=shlex.join(env + tune),
                               runtime_env={"env_vars": {"STUDY": "job"}})
    logs: list[str] = []
    status = submit.follow(client, job_id, timeout=300, echo=logs.append)
    assert status == JobStatus.SUCCEEDED, f"{status}: {client.get_job_logs(job_id)}"
    assert '"widths"' in "".join(logs)  # the result, streamed back

    records = [r for r in load_trials("job", url) if r.finished]  # a 3rd grid point waits
    assert [(r.width, r.status.value) for r in records] == [(32, "complete")] * 2
    assert all(r.final_val_loss is not None and r.val_curve for r in records)
    if backend == "ray":  # trained by Ray workers, recorded into the same Optuna trials
        trials = optuna.load_study(study_name="job.w32", storage=url).get_trials()
        assert {t.user_attrs.get("backend") for t in trials if t.state.is_finished()} == {
            "ray"}


@pytest.mark.slow
def test_submit_runs_the_whole_pipeline_as_a_job(ray_cluster, tmp_path, text_file, capsys):
    """submit.py → pipeline.sh → tune, predict, confirm on Ray, as a user runs it, with
    the cluster's own hptransfer (``--install none``): the study, the prediction and the
    confirmation runs all end up in the one storage."""
    import json

    config = tmp_path / "tiny.toml"
    config.write_text(TINY_TOML)
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    cli = f"env HPTRANSFER_HOME={tmp_path / 'home'} {sys.executable} -m hptransfer.cli"
    code = _submit_module().main([
        "--address", ray_cluster.dashboard_url, "--install", "none", "--storage", url,
        "--study", "pipe", "--widths", "32,64", "--trials", "3", "--steps", "4",
        "--target-width", "64", "--confirm-workers", "2", "--confirm-args", "--offsets -1,0,1",
        "--tune-args", f"--config {config} --data {text_file} --depth 1 --seq-len 32 "
                       f"--head-dim 16 --base-width 32 --lr-range 2^-8,2^-4 "
                       f"--weight-decay-range off --batch-sizes off",
        "--env", f"HPTRANSFER={cli}", "--env", f"OUT_DIR={tmp_path / 'out'}"])
    logs = capsys.readouterr()
    assert code == 0, logs.out + logs.err
    assert logs.out.index("== tune") < logs.out.index("== predict") < logs.out.index("== confirm")

    records = [r for r in load_trials("pipe", url) if r.finished]
    assert sorted((r.width, r.status.value) for r in records) == (
        [(32, "complete")] * 3 + [(64, "complete")] * 3)
    prediction = json.loads((tmp_path / "out" / "prediction.json").read_text())
    assert prediction["target_width"] == 64
    runs = optuna.load_study(study_name="pipe.confirm.w64", storage=url).get_trials()
    assert len(runs) == 3 and all(t.state.name == "COMPLETE" for t in runs)


# --- shared storage -----------------------------------------------------------------------


@pytest.fixture
def nodes(monkeypatch):
    """Pretend the cluster has ``nodes[0]`` alive nodes (check_shared_storage asks ray.nodes)."""
    ray = pytest.importorskip("ray")
    count = [1]
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "NodeID": str(i)}
                                               for i in range(count[0])]
                        + [{"Alive": False, "NodeID": "dead"}])
    return count


@pytest.mark.parametrize("url", ["sqlite:////tmp/studies.db", "studies.db",
                                 "journal:////tmp/studies.log"])
def test_file_storage_is_refused_on_a_multi_node_cluster(nodes, url):
    from hptransfer.backends.cluster import check_shared_storage

    check_shared_storage(url)  # one node: every worker sees the same disk
    nodes[0] = 2
    with pytest.raises(StudyError, match="2 nodes") as refused:
        check_shared_storage(url)
    assert "postgresql://" in str(refused.value)


def test_database_storage_is_fine_on_a_multi_node_cluster(nodes):
    from hptransfer.backends.cluster import check_shared_storage

    nodes[0] = 3
    check_shared_storage("postgresql://u:p@db:5432/hp")


def test_file_storage_is_refused_through_a_remote_ray_client(nodes):
    from hptransfer.backends.cluster import check_shared_storage

    with pytest.raises(StudyError, match="postgresql://"):
        check_shared_storage("sqlite:////tmp/studies.db", "ray://head.example.com:10001")
    check_shared_storage("sqlite:////tmp/studies.db", "ray://127.0.0.1:10001")  # this machine
    check_shared_storage("postgresql://u:p@db/hp", "ray://head.example.com:10001")

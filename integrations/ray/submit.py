"""Submit the tune → predict → confirm pipeline (pipeline.sh) to a Ray cluster as a Ray Job.

    python integrations/ray/submit.py --address http://HEAD:8265 \\
        --storage postgresql://USER:PASSWORD@HOST:5432/DB \\
        --widths 64,128,256 --trials 16 --target-width 1024 --gpus-per-trial 0.25

It uploads this folder (pipeline.sh) as the job's working directory, has Ray install
hptransfer on every node that runs part of the job (``runtime_env``), follows the job's logs
until it ends and exits non-zero unless it SUCCEEDED. Ctrl-C stops following, not the job.
The same submission with Ray's CLI, from this folder::

    ray job submit --address http://HEAD:8265 --working-dir . \\
        --runtime-env-json '{"pip": ["hptransfer[ray,postgres]"],
                             "env_vars": {"HPTRANSFER_STORAGE": "postgresql://...",
                                          "WIDTHS": "64,128,256", "TARGET_WIDTH": "1024"}}' \\
        -- bash pipeline.sh

``--install`` says where hptransfer comes from on the cluster: ``pip`` (default) installs
``--pip-spec`` into the job's environment; ``checkout`` uploads the hptransfer checkout this
file lives in as the working directory (runs your local changes; only its dependencies are
pip-installed); ``none`` uses the hptransfer already installed in the cluster's image.

The storage must be a database every node reaches (PostgreSQL): a SQLite file on one node is
refused on a multi-node cluster (see README.md). Omit ``--storage`` to use the
``HPTRANSFER_STORAGE`` variable the cluster's nodes already have (a Kubernetes Secret, say):
the job's runtime_env, where ``--storage`` goes, is shown by the Ray dashboard.

Needs only ``pip install "ray[default]"`` on this machine, not hptransfer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from enum import Enum
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHECKOUT = HERE.parent.parent  # the repository root, when this file is in a checkout
DEFAULT_PIP = "hptransfer[ray,postgres]"

# submit.py flag → pipeline.sh environment variable (pipeline.sh has the defaults)
SETTINGS = {
    "study": "STUDY",
    "widths": "WIDTHS",
    "trials": "TRIALS",
    "steps": "STEPS",
    "target_width": "TARGET_WIDTH",
    "cpus_per_trial": "CPUS_PER_TRIAL",
    "gpus_per_trial": "GPUS_PER_TRIAL",
    "confirm_workers": "CONFIRM_WORKERS",
    "cpus_per_worker": "CPUS_PER_WORKER",
    "tune_args": "TUNE_ARGS",
    "confirm_args": "CONFIRM_ARGS",
    "storage": "HPTRANSFER_STORAGE",
}


class Install(str, Enum):
    """Where the job's hptransfer comes from."""

    PIP = "pip"  # pip-install --pip-spec into the job's runtime environment
    CHECKOUT = "checkout"  # upload this checkout; pip-install only its dependencies
    NONE = "none"  # the cluster's image already has hptransfer


def _checkout_requirements() -> list[str]:
    """The checkout's dependencies plus the PostgreSQL driver (Ray is on the cluster)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    pyproject = CHECKOUT / "pyproject.toml"
    if not pyproject.is_file():
        raise SystemExit(f"--install checkout: {HERE} is not inside an hptransfer checkout "
                         f"(no {pyproject})")
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["postgres"]]


def job_spec(settings: dict[str, str], *, install: Install = Install.PIP,
             pip_spec: str = DEFAULT_PIP) -> tuple[str, dict]:
    """The entrypoint and ``runtime_env`` that run pipeline.sh with ``settings`` (its
    environment variables, e.g. ``{"WIDTHS": "64,128", "HPTRANSFER_STORAGE": url}``)."""
    env = dict(settings)
    if install is Install.CHECKOUT:
        # the checkout is the working directory, so `python -m hptransfer.cli` imports it,
        # in the driver and in every Ray worker (Ray puts the working directory on sys.path)
        env.setdefault("HPTRANSFER", "python -m hptransfer.cli")
        return "bash integrations/ray/pipeline.sh", {
            "working_dir": str(CHECKOUT), "pip": _checkout_requirements(), "env_vars": env,
            "excludes": [".git", ".venv", "*.db", "studies/", "reports/"]}
    runtime_env = {"working_dir": str(HERE), "env_vars": env}
    if install is Install.PIP:
        runtime_env["pip"] = [pip_spec]
    return "bash pipeline.sh", runtime_env


def submit_job(client, *, wait_for_agent_s: float = 60, **job) -> str:
    """``client.submit_job(**job)``, retried while the head's job agent is not up yet (a
    cluster that has just started answers "No available agent to submit job")."""
    deadline = time.monotonic() + wait_for_agent_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as error:
            if "No available agent" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(2)


async def _stream(client, job_id: str, echo) -> None:
    async for chunk in client.tail_job_logs(job_id):
        echo(chunk)


def follow(client, job_id: str, *, timeout: float | None = None,
           echo=lambda text: print(text, end="", flush=True)):
    """Print the job's logs as they come until it ends (or ``timeout`` seconds); its status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        asyncio.run(asyncio.wait_for(_stream(client, job_id, echo), timeout))
    except asyncio.TimeoutError:
        return client.get_job_status(job_id)
    status = client.get_job_status(job_id)
    while not status.is_terminal() and (deadline is None or time.monotonic() < deadline):
        time.sleep(0.5)  # the log stream can close a moment before the status is final
        status = client.get_job_status(job_id)
    return status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", default=None,
                        help="the cluster's dashboard, http://HEAD:8265 [default: $RAY_ADDRESS]")
    parser.add_argument("--storage", help="study storage every node reaches, e.g. "
                                          "postgresql://USER:PASSWORD@HOST:5432/DB [default: "
                                          "the nodes' $HPTRANSFER_STORAGE]")
    parser.add_argument("--study", help="study name [pipeline.sh: proxy]")
    parser.add_argument("--widths", help="proxy widths [pipeline.sh: 64,128,256]")
    parser.add_argument("--trials", help="finished trials per width [pipeline.sh: 16]")
    parser.add_argument("--steps", help="steps per trial [hptransfer: 150]")
    parser.add_argument("--target-width", help="width to predict and confirm "
                                               "[pipeline.sh: 1024]")
    parser.add_argument("--cpus-per-trial", help="CPUs per proxy trial [1]")
    parser.add_argument("--gpus-per-trial", help="GPUs per proxy trial, 0.25 = four per card "
                                                 "[0]")
    parser.add_argument("--confirm-workers", help="DDP workers per confirmation run [2]")
    parser.add_argument("--cpus-per-worker", help="CPUs per confirmation worker [1]")
    parser.add_argument("--tune-args", help='more tune flags, e.g. "--depth 2"')
    parser.add_argument("--confirm-args", help='more confirm flags, e.g. "--offsets -1,0,1"')
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="another environment variable for the job (repeatable)")
    parser.add_argument("--install", choices=[i.value for i in Install], default="pip",
                        help="where the job's hptransfer comes from (above) [default: pip]")
    parser.add_argument("--pip-spec", default=DEFAULT_PIP,
                        help=f"what --install pip installs [default: {DEFAULT_PIP}]")
    parser.add_argument("--submission-id", help="job id [default: generated]")
    parser.add_argument("--no-wait", action="store_true",
                        help="print the job id and return instead of following the logs")
    args = parser.parse_args(argv)

    settings = {var: str(getattr(args, flag)) for flag, var in SETTINGS.items()
                if getattr(args, flag) is not None}
    for item in args.env:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--env {item!r}: give KEY=VALUE")
        settings[key] = value
    entrypoint, runtime_env = job_spec(settings, install=Install(args.install),
                                       pip_spec=args.pip_spec)

    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(args.address)
    job_id = submit_job(client, entrypoint=entrypoint, runtime_env=runtime_env,
                        submission_id=args.submission_id)
    print(f"submitted {job_id}: {entrypoint}", file=sys.stderr)
    if args.no_wait:
        print(job_id)
        print(f"follow: ray job logs --address {client.get_address()} -f {job_id}",
              file=sys.stderr)
        return 0
    try:
        status = follow(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job goes on. Stop it: ray job stop {job_id}",
              file=sys.stderr)
        return 130
    if status != JobStatus.SUCCEEDED:
        message = client.get_job_info(job_id).message or ""
        print(f"job {job_id} {status.value}: {message}", file=sys.stderr)
        return 1
    print(f"job {job_id} SUCCEEDED", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Trials per hour on Ray with 1 vs 2 concurrent trials (1 thread each) on this machine.

Starts a private local Ray cluster with ``--cpus`` CPUs, then tunes the same study twice
through ``hptransfer.tune(runner=RayTune(...))`` into fresh storages: once with ``concurrent=1`` and
once with ``concurrent=2``, every trial pinned to one thread (``cpus_per_trial=1``). Reports
wall time, trials per hour and the ratio (target ≥ 1.8 on 2 cores). The wall time includes
everything a user waits for: Ray scheduling, worker start-up, recording into Optuna.
A benchmark, not a test: run it on a quiet machine.

    python benchmarks/ray_concurrency.py --width 64 --trials 8 \
        --out studies/results/ray_concurrency.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from hptransfer.backends.ray_tune import RayOptions, RayTune
from hptransfer.budget import Budget
from hptransfer.hparams import HParams
from hptransfer.provenance import collect
from hptransfer.space import SearchSpace
from hptransfer.spec import ModelSpec
from hptransfer.study.config import PROXY_SPEC, study_config
from hptransfer.study.records import load_trials
from hptransfer.study.schema import TrialStatus
from hptransfer.study.search import WarmStart
from hptransfer.study.tune import tune


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import ray

    os.environ["HPTRANSFER_THREADS"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="hptransfer-ray-bench-"))
    os.environ["HPTRANSFER_HOME"] = str(workdir)
    ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"HPTRANSFER_THREADS": "1"}})
    # LR only, in the stable range, so every trial runs its whole budget
    config = study_config(spec=ModelSpec(**PROXY_SPEC),
                          space=SearchSpace(lr=(2.0**-10, 2.0**-6), base=HParams(batch_size=16)),
                          budget=Budget(steps=args.steps, eval_every=args.steps))
    rows = []
    for concurrent in (1, 2):
        url = f"sqlite:///{workdir / f'c{concurrent}.db'}"
        started = time.perf_counter()
        tune(config, study="bench", widths=(args.width,), trials=args.trials, storage=url,
             warm_start=WarmStart.NONE,
             runner=RayTune(RayOptions(cpus_per_trial=1, concurrent=concurrent)))
        wall = time.perf_counter() - started
        records = load_trials("bench", url)
        done = [r for r in records if r.status is TrialStatus.COMPLETE]
        rows.append({"concurrent": concurrent, "trials": len(done), "wall_s": round(wall, 1),
                     "trials_per_hour": round(3600 * len(done) / wall, 1),
                     "mean_trial_s": round(sum(r.wall_time_s for r in done) / len(done), 1)})
        print(rows[-1], flush=True)
    ray.shutdown()
    result = {"width": args.width, "steps": args.steps, "trials": args.trials,
              "cpus": args.cpus, "threads_per_trial": 1, "rows": rows,
              "ratio": round(rows[1]["trials_per_hour"] / rows[0]["trials_per_hour"], 2),
              "machine": collect(1).model_dump(mode="json")}
    print(f"2 concurrent / 1 concurrent = {result['ratio']}× trials per hour (target ≥ 1.8)")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

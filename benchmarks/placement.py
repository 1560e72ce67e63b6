"""Trials per hour on this machine: one trial with every CPU, or one-thread trials side by side.

The measurement behind ``workers="auto"`` (hptransfer/study/worker.py): at each width, the
same proxy trial (built-in corpus and setting, 150 steps, α = 2^-7) is trained in rounds,
alternating the two placements so that both see the same machine load:

- ``one``: one process, ``--cpus`` threads, the trials one after another;
- ``side``: ``--cpus`` processes of one thread each, one trial each, at the same time.

Trials per hour = trials finished / wall time of the round (process start-up included for
``side``: a tune's worker processes pay it once per width). A benchmark, not a test:

    python benchmarks/placement.py --widths 32,64,128,256 --rounds 2 \
        --out studies/results/placement.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path


def _trial(width: int, threads: int) -> float:
    """Train one proxy trial; its wall time."""
    from hptransfer.hparams import HParams
    from hptransfer.space import SearchSpace
    from hptransfer.study.config import study_config
    from hptransfer.training.loop import train

    config = study_config(space=SearchSpace(weight_decay=None, batch_sizes=None,
                                            base=HParams(batch_size=16)))
    record = train(config.spec_at(width), HParams(lr=2.0**-7, batch_size=16), config.budget,
                   threads=threads)
    return record.wall_time_s


def _one(width: int, cpus: int, trials: int) -> float:
    started = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for _ in range(trials):
            pool.submit(_trial, width, cpus).result()
    return time.perf_counter() - started


def _side(width: int, cpus: int, trials: int) -> float:
    started = time.perf_counter()
    with ProcessPoolExecutor(cpus, mp_context=multiprocessing.get_context("spawn")) as pool:
        for future in [pool.submit(_trial, width, 1) for _ in range(trials)]:
            future.result()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--widths", type=lambda s: [int(w) for w in s.split(",")],
                        default=[32, 64, 128, 256])
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = {"cpus": args.cpus, "load_before": os.getloadavg()[0], "widths": {}}
    for width in args.widths:
        one = side = 0.0
        trials = 0
        for _ in range(args.rounds):  # interleaved: both placements see the same load
            one += _one(width, args.cpus, args.cpus)
            side += _side(width, args.cpus, args.cpus)
            trials += args.cpus
        row = {"trials": trials, "one_per_hour": 3600 * trials / one,
               "side_per_hour": 3600 * trials / side, "ratio": one / side}
        results["widths"][width] = row
        print(f"width {width}: one process × {args.cpus} threads {row['one_per_hour']:.0f} "
              f"trials/h, {args.cpus} × 1 thread side by side {row['side_per_hour']:.0f} "
              f"trials/h: ×{row['ratio']:.2f}", flush=True)
    results["load_after"] = os.getloadavg()[0]
    if args.out is not None:
        from hptransfer.report.files import write_atomic

        write_atomic(args.out, json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

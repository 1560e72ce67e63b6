"""The loss-vs-LR bowls themselves: a half-octave LR scan at several widths and two seeds.

What the ladder search and the transfer models were designed against (docs/transfer.md,
"Limits"): the built-in proxy setting (depth 4, head dim 16, seq 128, batch 16, 150 steps,
µP, base width 128, λ = 0), every half octave of α in a range per width, seeds 0 and 1 (the
widest width seed 0 only). Each run is appended to ``--jsonl`` as it finishes, so an
interrupted scan resumes; ``--out`` gets the table. Two runs side by side, one thread each.
A benchmark, not a test (about 1.5 hours on 2 cores):

    python benchmarks/lr_scan.py --jsonl scan.jsonl --out studies/results/lr_scan.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

# width → (lowest, highest log2 α, seeds)
PLAN = {16: (-11.0, -3.0, (0, 1)), 32: (-11.0, -4.0, (0, 1)), 64: (-11.0, -4.5, (0, 1)),
        128: (-10.0, -5.0, (0, 1)), 256: (-8.5, -5.5, (0,))}


def points() -> list[tuple[int, float, int]]:
    out = []
    for width, (low, high, seeds) in PLAN.items():
        steps = int(round((high - low) / 0.5))
        out += [(width, low + 0.5 * k, seed) for k in range(steps + 1) for seed in seeds]
    return out


def run(point: tuple[int, float, int]) -> dict:
    from hptransfer.hparams import HParams
    from hptransfer.space import SearchSpace
    from hptransfer.study.config import study_config
    from hptransfer.training.loop import train

    width, code, seed = point
    config = study_config(space=SearchSpace(weight_decay=None, batch_sizes=None,
                                            base=HParams(batch_size=16)))
    hparams = HParams(**{**config.space.base.model_dump(), "lr": 2.0**code})
    record = train(config.spec_at(width), hparams, config.budget, seed=seed, threads=1)
    return {"width": width, "log2lr": code, "seed": seed, "status": record.status.value,
            "loss": record.final_val_loss, "time": record.wall_time_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jsonl", type=Path, required=True, help="runs, appended (resume)")
    parser.add_argument("--out", type=Path, default=None, help="the table as JSON")
    args = parser.parse_args()
    done = []
    if args.jsonl.exists():
        done = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line]
    seen = {(d["width"], d["log2lr"], d["seed"]) for d in done}
    todo = [p for p in points() if p not in seen]
    print(f"{len(todo)} runs to go", flush=True)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(2, mp_context=context) as pool, args.jsonl.open("a") as log:
        for row in pool.map(run, todo):
            log.write(json.dumps(row) + "\n")
            log.flush()
            done.append(row)
            print(row, flush=True)
    if args.out is not None:
        from hptransfer.report.files import write_atomic

        table: dict[str, dict[str, dict[str, float | None]]] = {}
        for d in sorted(done, key=lambda d: (d["width"], d["seed"], d["log2lr"])):
            table.setdefault(str(d["width"]), {}).setdefault(f"seed {d['seed']}", {})[
                f"{d['log2lr']:g}"] = d["loss"] if d["status"] == "complete" else None
        write_atomic(args.out, json.dumps({"setting": "built-in proxy setting, 150 steps, "
                                           "batch 16, µP, λ = 0; loss by log2 α",
                                           "loss": table}, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

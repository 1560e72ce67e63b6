"""Answer time of :func:`hptransfer.predict_hparams` on a 30-trial synthetic study.

The study is the one tests/test_transfer.py predicts from (``write_synthetic_study``):
widths 32, 64 and 128, 10 trials each drawn from known loss bowls over the LR, weight decay
and batch size, written into a fresh SQLite file the way ``hptransfer tune`` stores trials.
Timed: whole calls of ``predict_hparams(--target-width, study=..., storage=URL)``, from
opening the storage to the returned prediction (loading the config and trials, the
per-width fits with ``--bootstrap`` resamples, the transfer fit). The first call also pays
one-off costs (imports, the SQLAlchemy engine) and is reported apart from the median and
best of the ``--repeats`` calls after it. The default test suite used to assert under 3 s;
a wall-clock limit depends on the machine and its load, so it is measured here instead.
A benchmark, not a test: run it on a quiet machine.

    python benchmarks/predict_speed.py [--repeats 5] [--target-width 2048] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna

from hptransfer.transfer import predict_hparams

TESTS = Path(__file__).resolve().parent.parent / "tests"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed calls after the first (cold) one")
    parser.add_argument("--target-width", type=int, default=2048)
    parser.add_argument("--bootstrap", type=int, default=1000,
                        help="bootstrap resamples per fit (predict_hparams' default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per study created

    sys.path.insert(0, str(TESTS))  # the study is built exactly as the test builds it
    from test_transfer import write_synthetic_study

    with tempfile.TemporaryDirectory() as folder:
        url = f"sqlite:///{Path(folder) / 'synthetic.db'}"
        records, _ = write_synthetic_study(url, "synthetic")
        seconds = []
        for _ in range(1 + args.repeats):
            tick = time.perf_counter()
            prediction = predict_hparams(args.target_width, study="synthetic", storage=url,
                                         bootstrap=args.bootstrap)
            seconds.append(time.perf_counter() - tick)
    warm = seconds[1:]
    result = {"trials": len(records), "widths": [w.width for w in prediction.evidence.widths],
              "target_width": args.target_width, "bootstrap": args.bootstrap,
              "first_s": round(seconds[0], 4), "median_s": round(statistics.median(warm), 4),
              "best_s": round(min(warm), 4), "repeats": len(warm),
              "predicted_lr": prediction.hparams.lr}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"predict_hparams({args.target_width}) on a {result['trials']}-trial study "
          f"(widths {result['widths']}, {args.bootstrap} bootstrap resamples): first call "
          f"{result['first_s']:.3f} s, then median {result['median_s']:.3f} s, best "
          f"{result['best_s']:.3f} s over {result['repeats']}")


if __name__ == "__main__":
    main()

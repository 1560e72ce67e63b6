"""Per-trial orchestration overhead of `hptransfer tune`: storage and sampler time per trial.

Runs a tune of tiny trials (so the overhead is visible) through the real worker loop and
measures, per trial, wall time outside :func:`hptransfer.training.loop.train`: ask, sampling,
writing user attributes and reports, tell, reclaiming lost trials and counting finished
ones. Reported in seconds per trial and as a fraction of a default proxy trial's time
(``--trial-seconds``, measured separately: the default `tune --proxy-width 128` trial).

    python benchmarks/orchestration.py --trials 30 --storage sqlite   # or journal
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import hptransfer.training.loop as training
from hptransfer.budget import Budget
from hptransfer.data.corpus import load_corpus
from hptransfer.hparams import HParams
from hptransfer.space import SearchSpace
from hptransfer.spec import ModelSpec
from hptransfer.study.config import StudyConfig
from hptransfer.study.search import SamplerKind
from hptransfer.study.tune import tune
from hptransfer.study.worker import LocalRunner


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--storage", choices=["sqlite", "journal"], default="sqlite")
    parser.add_argument("--sampler", default="tpe")
    parser.add_argument("--trial-seconds", type=float, default=None,
                        help="a default trial's wall time, to express the overhead as a share")
    args = parser.parse_args()

    in_train = []
    real_train = training.train

    def timed_train(*a, **k):
        tick = time.perf_counter()
        try:
            return real_train(*a, **k)
        finally:
            in_train.append(time.perf_counter() - tick)

    training.train = timed_train  # the worker imports train from the module at call time
    folder = Path(tempfile.mkdtemp())
    os.environ["HPTRANSFER_HOME"] = str(folder)
    storage = str(folder / ("s.db" if args.storage == "sqlite" else "s.log"))
    corpus = load_corpus()
    config = StudyConfig(
        spec=ModelSpec(width=32, depth=1, seq_len=32, base_width=32),
        budget=Budget(steps=2, eval_every=2, eval_tokens=64),
        space=SearchSpace(weight_decay=(1e-5, 1e-1), batch_sizes=(2, 4),
                          base=HParams(batch_size=2)),
        corpus_hash=corpus.content_hash)
    tick = time.perf_counter()
    tune(config, study="overhead", widths=(32,), trials=args.trials, storage=storage,
         sampler=SamplerKind(args.sampler), corpus=corpus, runner=LocalRunner(threads=1))
    total = time.perf_counter() - tick
    overhead = (total - sum(in_train)) / args.trials
    print(f"{args.storage}, {args.sampler}: {args.trials} trials in {total:.1f} s, "
          f"{sum(in_train):.1f} s in train(); orchestration {overhead * 1000:.0f} ms per trial")
    if args.trial_seconds:
        print(f"= {100 * overhead / args.trial_seconds:.2f}% of a {args.trial_seconds:.0f} s "
              f"default proxy trial")


if __name__ == "__main__":
    main()

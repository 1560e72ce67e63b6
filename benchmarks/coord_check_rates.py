"""How often does the coord check fail a correct model, and pass a wrong one?

For each model family (the built-in model, Hugging Face Llama and GPT-2, the nanoGPT module
of integrations/) it runs ``--checks`` coord checks under µP (correct: a failure is a false
alarm) and as many under SP (wrong: a pass is a miss), each check with ``--seeds`` seeds of
its own (check k uses seeds k·seeds … k·seeds + seeds − 1), and prints the rates. A
benchmark, not a test: it measures (docs/spec.md §6 has the numbers).

    python benchmarks/coord_check_rates.py --checks 10 --seeds 3 --out rates.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from hptransfer.checks.coord_check import coord_check
from hptransfer.data.corpus import load_corpus
from hptransfer.report.files import write_atomic

NANOGPT = str(Path(__file__).resolve().parent.parent / "integrations/nanogpt/model.py")
FAMILIES = {"builtin": {}, "hf-llama": {}, "hf-gpt2": {}, f"{NANOGPT}:make_model": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=10, help="checks per family and param")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per check")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    widths = tuple(int(w) for w in args.widths.split(","))
    corpus = load_corpus()
    results = []
    for model in args.families.split(","):
        for param in ("mup", "sp"):
            started, passed, failures = time.perf_counter(), 0, []
            for k in range(args.checks):
                report = coord_check(widths=widths, param=param, seed=k * args.seeds,
                                     seeds=args.seeds, corpus=corpus, threads=1, model=model,
                                     vocab=corpus.vocab_size, base_width=widths[0],
                                     **FAMILIES.get(model, {}))
                passed += report.passed
                failures.append([f"{g.module}@t{g.step} ×{g.per_doubling:.2f}"
                                 for g in report.failures][:3])
            wrong = args.checks - passed if param == "mup" else passed
            row = {"model": model.rsplit("/", 1)[-1], "param": param, "checks": args.checks,
                   "seeds_per_check": args.seeds, "passed": passed,
                   "false_fail_rate" if param == "mup" else "miss_rate":
                       wrong / args.checks,
                   "failures": failures, "seconds": round(time.perf_counter() - started)}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "failures"}), flush=True)
    if args.out is not None:
        write_atomic(args.out, json.dumps({"widths": widths, "results": results}, indent=1))


if __name__ == "__main__":
    main()

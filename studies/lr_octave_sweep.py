"""LR octave sweep at several widths: does the µP optimum stay put? (foundation check)

A short script, not yet the tuning service: trains every (width, α) cell once with the
same seed and data order, and writes the validation losses to a JSON file (resumable: cells
already in the file are skipped, each finished cell is written at once, atomically).

    python studies/lr_octave_sweep.py --param mup --widths 32,64,128 \
        --out studies/results/lr_octave_sweep_mup.json
    python studies/lr_octave_sweep.py --table studies/results/lr_octave_sweep_mup.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from hptransfer.budget import Budget
from hptransfer.data.corpus import load_corpus
from hptransfer.hparams import HParams
from hptransfer.spec import ModelSpec
from hptransfer.training.loop import train

# The CPU-scale setting (see docs/foundation.md): small enough that 3 widths × 8 octaves run
# in well under an hour on 2 cores, long enough for the loss to separate the LRs.
SETTING = {"depth": 4, "head_dim": 16, "seq_len": 128, "base_width": 128}
BATCH_SIZE = 16
STEPS = 300
EXPONENTS = tuple(range(-10, -2))  # α = 2^-10 … 2^-3


def _save(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)


def run(param: str, widths: list[int], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    data = json.loads(out.read_text()) if out.exists() else {
        "param": param, "setting": {**SETTING, "batch_size": BATCH_SIZE, "steps": STEPS},
        "cells": []}
    done = {(c["width"], c["lr_exponent"]) for c in data["cells"]}
    corpus = load_corpus()
    data["corpus"] = corpus.describe()
    for width in widths:
        for exponent in EXPONENTS:
            if (width, exponent) in done:
                continue
            spec = ModelSpec(width=width, param=param, **SETTING)
            record = train(spec, HParams(lr=2.0**exponent, batch_size=BATCH_SIZE),
                           Budget(steps=STEPS, eval_every=STEPS), corpus, seed=0)
            data["cells"].append({
                "width": width, "lr_exponent": exponent, "status": record.status.value,
                "val_loss": record.final_val_loss, "wall_time_s": round(record.wall_time_s, 1),
                "tokens_per_s": round(record.tokens_per_s), "flops": record.flops})
            _save(out, data)
            print(width, exponent, record.status.value, record.final_val_loss, flush=True)


def table(path: Path) -> str:
    """Markdown table: loss per width × log2 α, argmin per width marked in bold."""
    data = json.loads(path.read_text())
    widths = sorted({c["width"] for c in data["cells"]})
    exponents = sorted({c["lr_exponent"] for c in data["cells"]})
    cell = {(c["width"], c["lr_exponent"]): c for c in data["cells"]}
    lines = ["| width | " + " | ".join(f"2^{e}" for e in exponents) + " | argmin |",
             "|---" * (len(exponents) + 2) + "|"]
    for w in widths:
        losses = {e: cell[(w, e)]["val_loss"] for e in exponents if (w, e) in cell}
        finite = {e: v for e, v in losses.items() if v is not None}
        best = min(finite, key=finite.get) if finite else None
        row = []
        for e in exponents:
            v = losses.get(e)
            text = "—" if (w, e) not in cell else ("div." if v is None else f"{v:.4f}")
            row.append(f"**{text}**" if e == best else text)
        lines.append(f"| {w} | " + " | ".join(row) + f" | 2^{best} |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--param", default="mup")
    parser.add_argument("--widths", default="32,64,128")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--table", type=Path)
    args = parser.parse_args()
    if args.table:
        print(table(args.table))
    else:
        run(args.param, [int(w) for w in args.widths.split(",")], args.out)

"""The score that decides, as a table: the loss the target reaches at hptransfer's predicted
hparams against the best tuned baseline at the target, for the compute spent.

Each row pairs two results of ``benchmarks/transfer.py`` run on the same target width, seed
and corpus: one with ``--param mup`` (hptransfer's prediction and a µP grid at the target)
and one with ``--param sp`` (a standard-parametrization model tuned on its own proxies, then
on its own 7-point octave grid at the target). Columns:

- the loss at hptransfer's prediction (µP);
- the grid-tuned SP loss (the best of SP's target grid and SP's own predicted run) and the
  grid-tuned µP loss (the best of µP's target grid);
- the gap of the prediction to the best of those baselines, in nats and percent (negative:
  the prediction beats them);
- the µP LR error: octaves from the µP grid's refined optimum, and (after a slash, when
  recorded) from the optimum the same estimator finds in all of the target's runs, the run
  at the prediction included;
- the µP proxies' FLOPs as a fraction of the µP target grid's.

    python benchmarks/score_table.py --pair "built-in, 256, seed 0" \\
        studies/results/transfer_mup_w256_s0.json studies/results/transfer_sp_w256_s0.json

A benchmark report, not a test: it reads recorded results and measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

COLUMNS = ("run", "µP at prediction", "grid-tuned SP", "grid-tuned µP", "gap (nats)",
           "gap (%)", "LR error (oct): grid / all runs", "proxy ÷ target grid")


def _best(result: dict, *, with_prediction: bool) -> float:
    losses = [row["val_loss"] for row in result["grid"] if row["status"] == "complete"]
    if with_prediction and result["loss_at_prediction"] is not None:
        losses.append(result["loss_at_prediction"])
    return min(losses)


def row(label: str, mup: dict, sp: dict) -> list[str]:
    """One table row from a µP result and an SP result of the same target and seed."""
    for key in ("target_width", "seed", "budget_tokens"):
        if mup[key] != sp[key]:
            raise ValueError(f"{label}: the µP and SP results differ in {key} "
                             f"({mup[key]} vs {sp[key]}): pair runs of one setting")
    if mup.get("corpus_hash") != sp.get("corpus_hash"):
        raise ValueError(f"{label}: the µP and SP results were trained on different corpora")
    at_prediction = mup["loss_at_prediction"]
    sp_best = _best(sp, with_prediction=True)
    mup_best = _best(mup, with_prediction=False)
    baseline = min(sp_best, mup_best)
    gap = None if at_prediction is None else at_prediction - baseline
    return [label,
            "diverged" if at_prediction is None else f"{at_prediction:.4f}",
            f"{sp_best:.4f}", f"{mup_best:.4f}",
            "n/a" if gap is None else f"{gap:+.4f}",
            "n/a" if gap is None else f"{100 * gap / baseline:+.2f}",
            f"{mup['lr_error_octaves']:.2f}" + (
                "" if mup.get("lr_error_all_runs_octaves") is None
                else f" / {mup['lr_error_all_runs_octaves']:.2f}"),
            f"{mup['compute_ratio']:.3f}"]


def table(pairs: list[tuple[str, Path, Path]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for label, mup_path, sp_path in pairs:
        mup, sp = (json.loads(Path(p).read_text()) for p in (mup_path, sp_path))
        lines.append("| " + " | ".join(row(label, mup, sp)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pair", nargs=3, action="append", required=True,
                        metavar=("LABEL", "MUP_JSON", "SP_JSON"),
                        help="a row: its label, a --param mup result, a --param sp result")
    args = parser.parse_args()
    try:
        print(table([(label, Path(m), Path(s)) for label, m, s in args.pair]))
    except (OSError, ValueError, KeyError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

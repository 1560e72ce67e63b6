"""How well a target grid pins its own optimum: the LR error's yardstick, re-read.

``benchmarks/transfer.py`` scores a prediction by its distance in octaves to the optimum of
the target's 7-point octave grid, found by the predictor's own per-width estimator (the
least-squares parabola in log2 α through the runs within ±2 octaves of the best one). The
proxies' optima come from the same estimator, but on the ladder's runs, which sit half an
octave apart within about ±1 octave of the optimum. On an octave grid the ±2-octave window
holds the bowl's far flanks, where it is no parabola, so the two designs need not agree.
This report re-reads each recorded target with the window at ±2 and at ±1 octave, on the
grid alone and on all of the target's runs (the run at the prediction, and the half-octave
points of ``--extra`` files), and the LR error against each.

    python benchmarks/target_optimum.py studies/results/score_mup_w256_s{0,1}.json \\
        --extra studies/results/score_mup_w256_s1_half_octaves.json

A benchmark report, not a test: it reads recorded results and measures nothing itself.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

# the predictor's own window rule and vertex (every run here has one seed)
from hptransfer.study.optimum import fit_window, parabola_vertex

WINDOWS = (2.0, 1.0)  # octaves either side of the best run: the predictor's, the ladder's


def optimum(points: dict[float, float], window: float) -> float:
    """log2 α at the vertex of the parabola through the runs within ``window`` octaves of
    the best one (its nearest neighbour on each side always included, as the predictor
    does); the best run's LR when the parabola opens downward."""
    x = np.array(sorted(points))
    y = np.array([points[v] for v in x])
    best = float(x[np.argmin(y)])
    keep = fit_window(x, best, window)
    vertex = parabola_vertex(x[keep], y[keep])
    return best if math.isnan(vertex) else float(np.clip(vertex, x[keep].min(), x[keep].max()))


def read(result: dict, extras: list[dict]) -> tuple[float, dict[float, float], dict[float, float]]:
    """(predicted log2 α, the grid's points, all of the target's points) of one result."""
    grid = {math.log2(row["lr"]): row["val_loss"] for row in result["grid"]
            if row["status"] == "complete"}
    every = dict(grid)
    predicted = math.log2(result["predicted"]["lr"])
    if result.get("loss_at_prediction") is not None:
        every[predicted] = result["loss_at_prediction"]
    for extra in extras:
        every.update({float(code): loss for code, loss in extra["points"].items()})
    return predicted, grid, every


def rows(paths: list[Path], extra_paths: list[Path]) -> list[str]:
    extras = [json.loads(p.read_text()) for p in extra_paths]
    header = ["result", "predicted"] + [f"{what} ±{w:g}" for what in ("grid", "all runs")
                                        for w in WINDOWS]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for path in paths:
        result = json.loads(path.read_text())
        mine = [e for e in extras if e.get("width") == result["target_width"]
                and e.get("seed") == result["seed"]
                and e.get("hparams", {}).get("lr") == result["predicted"]["lr"]]
        predicted, grid, every = read(result, mine)
        cells = [path.stem, f"2^{predicted:.2f}"]
        for points in (grid, every):
            for window in WINDOWS:
                value = optimum(points, window)
                cells.append(f"2^{value:.2f} ({abs(predicted - value):.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", type=Path,
                        help="benchmarks/transfer.py results (their grid and prediction)")
    parser.add_argument("--extra", action="append", type=Path, default=[],
                        help="extra target runs ({width, seed, hparams, points: {log2 α: "
                             "loss}}), joined to the result of the same width, seed and "
                             "prediction")
    args = parser.parse_args()
    try:
        print("\n".join(rows(args.results, args.extra)))
    except (OSError, ValueError, KeyError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

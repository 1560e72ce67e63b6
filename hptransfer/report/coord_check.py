"""The coord check's files: the report as JSON and its picture as PNG."""

from __future__ import annotations

import json
from pathlib import Path

from hptransfer.checks.coord_check import CoordCheckReport
from hptransfer.report.files import figure_png, write_together
from hptransfer.report.plots import coord_check_figure

__all__ = ["write_coord_check"]


def write_coord_check(report: CoordCheckReport, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``coord_check_<param>.json`` and ``.png`` into ``out_dir``; return both paths."""
    stem = Path(out_dir) / f"coord_check_{report.param.value}"
    png, data = write_together({
        stem.with_suffix(".png"): figure_png(coord_check_figure(report), dpi=100),
        stem.with_suffix(".json"): json.dumps(report.model_dump(mode="json"), indent=2)})
    return data, png

"""Pictures of a study: the µTransfer plot (validation loss against LR, one curve per width).

Under µP the bowls line up: their minima sit at the same base LR at every width, and wider
is better (lower) at every LR. Diverged trials are drawn as crosses above the curves, pruned
ones are left out (their loss is from an unfinished schedule).
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from hptransfer.study.ledger import TrialRecord, TrialStatus, WidthSummary

__all__ = ["transfer_figure", "write_study_report"]


def transfer_figure(name: str, records: list[TrialRecord]):
    """A matplotlib figure of validation loss vs log2(LR), one line per width."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    widths = sorted({r.width for r in records})
    cmap = plt.get_cmap("viridis", max(len(widths), 2))
    finite = [r.final_val_loss for r in records if r.status is TrialStatus.COMPLETE]
    top = max(finite) if finite else 1.0
    for i, width in enumerate(widths):
        color = cmap(i)
        complete = [r for r in records
                    if r.width == width and r.status is TrialStatus.COMPLETE]
        done = sorted((r.hparams.lr, r.final_val_loss) for r in complete)
        if done:
            lrs, losses = zip(*done, strict=True)
            # a line only when the trials differ in LR alone (an LR grid, the paper's
            # plot): when weight decay or batch size vary too, neighbours are not comparable
            others = {r.hparams.model_dump_json(exclude={"lr"}) for r in complete}
            line = "-" if len(others) == 1 else "none"
            ax.plot(lrs, losses, marker="o", linestyle=line, alpha=0.8, color=color,
                    label=f"width {width}")
            best = min(done, key=lambda p: p[1])
            ax.plot(*best, marker="*", markersize=14, color=color, markeredgecolor="black")
        diverged = [r.hparams.lr for r in records if r.width == width
                    and r.status is TrialStatus.DIVERGED and r.hparams is not None]
        if diverged:
            ax.plot(diverged, [top] * len(diverged), marker="x", linestyle="none",
                    color=color)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("base learning rate α")
    ax.set_ylabel("validation loss")
    ax.set_title(f"µTransfer: {name} (★ best per width, × diverged)")
    ax.grid(True, alpha=0.3)
    if widths:
        ax.legend()
    fig.tight_layout()
    return fig


def _png_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_study_report(name: str, records: list[TrialRecord], summaries: list[WidthSummary],
                       out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<name>_transfer.png`` and a self-contained ``<name>_plot.html``.

    Both are written to temporary names and renamed, so a crash leaves no half a file.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png = _png_bytes(transfer_figure(name, records))
    png_path, html_path = out / f"{name}_transfer.png", out / f"{name}_plot.html"
    rows = "".join(
        f"<tr><td>{s.width}</td><td>{s.finished}</td><td>{s.complete}</td>"
        f"<td>{s.diverged}</td><td>{s.pruned}</td>"
        f"<td>{'' if s.best_loss is None else f'{s.best_loss:.4f}'}</td>"
        f"<td>{'' if s.best_hparams is None else f'{s.best_hparams.lr:.4g}'}</td>"
        f"<td>{'' if s.best_hparams is None else f'{s.best_hparams.weight_decay:.3g}'}</td>"
        f"<td>{'' if s.best_hparams is None else s.best_hparams.batch_size}</td>"
        f"<td>{s.flops:.3g}</td><td>{s.wall_time_s:.0f}</td></tr>" for s in summaries)
    page = (
        f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)}</title>"
        f"<h1>Study {html.escape(name)}</h1>"
        f"<img alt='validation loss vs learning rate per width' "
        f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        "<table border=1 cellpadding=4><tr><th>width</th><th>finished</th><th>complete</th>"
        "<th>diverged</th><th>pruned</th><th>best loss</th><th>lr</th><th>weight decay</th>"
        f"<th>batch</th><th>FLOPs</th><th>seconds</th></tr>{rows}</table>")
    for path, data in ((png_path, png), (html_path, page.encode())):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
    return png_path, html_path

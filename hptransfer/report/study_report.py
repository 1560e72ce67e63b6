"""The study report: what the proxies say, what was predicted, and whether it held.

:func:`write_report` writes ``{study}_report.md`` and a self-contained ``{study}_report.html``
(images inline as base64) with the µTransfer plot (:func:`hptransfer.report.plots.transfer_figure`),
the LR optimum of each proxy width against width with its interval, the fit line and the
prediction at the target width, the prediction's rules and warnings, and the confirmation
runs with their verdict (:mod:`hptransfer.confirm.runs`). The Markdown file shows the same
figures from PNG files written beside it. Every file is written to a temporary name and
renamed, so a crash leaves no half a file.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from hptransfer.spec import FrozenConfig

__all__ = ["Report", "optimum_figure", "write_report"]


class Report(FrozenConfig):
    """Where :func:`write_report` wrote, and what it found."""

    markdown: Path
    html: Path
    images: tuple[Path, ...]
    target_width: int | None
    verdict: str | None


def optimum_figure(name: str, prediction, confirmation=None):
    """The LR optimum of each proxy width (with its 95% interval) against width, the fit
    line of :mod:`hptransfer.transfer.fit`, the prediction at the target width and, given a
    :class:`~hptransfer.confirm.runs.Confirmation`, its best run's LR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    evidence = prediction.evidence.widths
    widths = [e.width for e in evidence]
    values = [e.optima["lr"].value for e in evidence]
    lows = [v - e.optima["lr"].interval[0] for v, e in zip(values, evidence, strict=True)]
    highs = [e.optima["lr"].interval[1] - v for v, e in zip(values, evidence, strict=True)]
    ax.errorbar(widths, values, yerr=[lows, highs], marker="o", linestyle="none", capsize=4,
                label="proxy optimum (95% interval)")
    fit = prediction.evidence.fits["lr"]
    slope = fit.slope if fit.model.value == "log-linear" else 0.0
    target = prediction.target_width
    xs = [min(widths), target]
    ys = [2.0 ** (fit.target + slope * math.log2(x / target)) for x in xs]
    ax.plot(xs, ys, linestyle="--", color="gray",
            label=f"fit ({fit.model.value}, slope {fit.slope:+.2f} octave/doubling)")
    low, high = prediction.intervals["lr"]
    lr = prediction.hparams.lr
    ax.errorbar([target], [lr], yerr=[[lr - low], [high - lr]], marker="*", markersize=14,
                color="crimson", capsize=4, linestyle="none",
                label=f"prediction at width {target}")
    best = confirmation and next((r for r in confirmation.runs
                                  if r.offset == confirmation.best_offset), None)
    if best is not None:
        ax.plot([target], [best.lr], marker="D", color="green", linestyle="none",
                label=f"best confirmation run ({confirmation.verdict.value})")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("width")
    ax.set_ylabel("optimal base learning rate α")
    ax.set_title(f"LR optimum vs width: {name}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    from hptransfer.report.plots import _png_bytes

    return _png_bytes(fig)


def _write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(row) + " |" for row in rows)]


def _sections(name: str, prediction, problem: str | None, confirmation) -> list[tuple]:
    """The report as (kind, content) blocks shared by the Markdown and HTML writers."""
    blocks: list[tuple] = []
    if problem is not None:
        blocks += [("h2", "Prediction"), ("p", f"No prediction: {problem}")]
    elif prediction is not None:
        h = prediction.hparams
        low, high = prediction.intervals["lr"]
        blocks += [("h2", f"Prediction at width {prediction.target_width}"),
                   ("p", f"lr {h.lr:.4g} (2^{math.log2(h.lr):.2f}), 95% interval "
                         f"{low:.4g} … {high:.4g}; weight decay {h.weight_decay:.3g}; batch "
                         f"{h.batch_size}; hidden matrices: {prediction.hidden_lr()}"),
                   ("image", "optimum"),
                   ("h3", "Rules applied"),
                   ("list", [f"{r.name}: {r.detail}" for r in prediction.rules] or ["none"]),
                   ("h3", "Warnings"),
                   ("list", list(prediction.warnings) or ["none"])]
    if confirmation is not None:
        c = confirmation
        regret = "n/a" if c.regret is None else f"{100 * c.regret:.2f}%"
        rows = [[f"{r.offset:+g}", f"{r.lr:.4g}", r.status.value,
                 "" if r.loss is None else f"{r.loss:.4f}"] for r in c.runs]
        blocks += [("h2", f"Confirmation at width {c.target_width}"),
                   ("p", f"Verdict: **{c.verdict.value}**, regret {regret} (tolerance "
                         f"{100 * c.tolerance:.2g}%)"),
                   ("table", (["offset (octaves)", "lr", "status", "val loss"], rows))]
        if c.notes:
            blocks.append(("list", list(c.notes)))
    elif prediction is not None:
        blocks += [("h2", "Confirmation"),
                   ("p", f"No confirmation runs yet: hptransfer confirm --target-width "
                         f"{prediction.target_width} --study {name}")]
    return blocks


def _markdown(name: str, blocks: list[tuple], images: dict[str, Path]) -> str:
    lines = [f"# Study {name}", "", f"![µTransfer plot]({images['transfer'].name})", ""]
    for kind, content in blocks:
        if kind in ("h2", "h3"):
            lines += [("## " if kind == "h2" else "### ") + content, ""]
        elif kind == "p":
            lines += [content, ""]
        elif kind == "image":
            lines += [f"![LR optimum vs width]({images[content].name})", ""]
        elif kind == "list":
            lines += [*(f"- {item}" for item in content), ""]
        elif kind == "table":
            lines += [*_table(*content), ""]
    return "\n".join(lines)


def _html(name: str, blocks: list[tuple], pngs: dict[str, bytes]) -> str:
    def image(key: str, alt: str) -> str:
        return (f"<img alt='{alt}' src='data:image/png;base64,"
                f"{base64.b64encode(pngs[key]).decode()}'>")

    def text(value: str) -> str:  # escape, then the one Markdown emphasis the blocks use
        escaped = html.escape(value)
        parts = escaped.split("**")
        return "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))

    out = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)}</title>",
           f"<h1>Study {html.escape(name)}</h1>", image("transfer", "µTransfer plot")]
    for kind, content in blocks:
        if kind in ("h2", "h3", "p"):
            out.append(f"<{kind}>{text(content)}</{kind}>")
        elif kind == "image":
            out.append(image(content, "LR optimum vs width"))
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{text(i)}</li>" for i in content) + "</ul>")
        elif kind == "table":
            header, rows = content
            out.append("<table border=1 cellpadding=4><tr>"
                       + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                                 + "</tr>" for row in rows) + "</table>")
    return "\n".join(out) + "\n"


def write_report(study: str = "proxy", *, storage: Any = None,
                 target_width: int | None = None, out_dir: str | Path = "reports") -> Report:
    """Write ``{study}_report.md``, ``{study}_report.html`` and the figures' PNGs.

    ``target_width`` defaults to the widest one with confirmation runs, if any; without a
    target width the report holds the µTransfer plot only. A study that cannot support a
    prediction gets a report saying why. Raises :class:`hptransfer.study.ledger.StudyError` when
    there is no such study.
    """
    from hptransfer.confirm.runs import confirmation_widths, load_confirmation
    from hptransfer.report.plots import transfer_figure
    from hptransfer.study.ledger import _open, load_trials
    from hptransfer.transfer import PredictionError, predict_hparams

    storage = _open(storage)
    records = load_trials(study, storage)
    if target_width is None:
        confirmed = confirmation_widths(study, storage)
        target_width = confirmed[-1] if confirmed else None
    prediction, problem, confirmation = None, None, None
    if target_width is not None:
        try:
            prediction = predict_hparams(target_width, study=study, storage=storage)
        except PredictionError as error:
            problem = str(error)
        confirmation = load_confirmation(study, target_width, storage)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pngs = {"transfer": _png(transfer_figure(study, records))}
    if prediction is not None:
        pngs["optimum"] = _png(optimum_figure(study, prediction, confirmation))
    images = {key: out / f"{study}_{key}.png" for key in pngs}
    blocks = _sections(study, prediction, problem, confirmation)
    markdown, page = out / f"{study}_report.md", out / f"{study}_report.html"
    for key, data in pngs.items():
        _write(images[key], data)
    _write(markdown, _markdown(study, blocks, images).encode())
    _write(page, _html(study, blocks, pngs).encode())
    return Report(markdown=markdown, html=page, images=tuple(images.values()),
                  target_width=target_width,
                  verdict=confirmation.verdict.value if confirmation else None)

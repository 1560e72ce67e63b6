"""The study report, and the plot page: what the proxies say, what was predicted, whether it held.

:func:`write_report` writes ``{study}_report.md`` and a self-contained ``{study}_report.html``
(images inline): the µTransfer plot, the LR optimum of each proxy width against width with
the prediction, its rules and warnings, and the confirmation runs with their verdict.
:func:`write_plot_page` writes what ``hptransfer plot`` shows: the µTransfer plot and a
table of the widths. Every file goes through :func:`hptransfer.report.files.write_together`.
"""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

from hptransfer.report.files import figure_png, write_together
from hptransfer.report.plots import optimum_figure, transfer_figure
from hptransfer.report.tables import html_table, markdown_table
from hptransfer.spec import FrozenConfig
from hptransfer.study.records import WidthSummary
from hptransfer.study.schema import TrialRecord

__all__ = ["Report", "write_plot_page", "write_report"]


class Report(FrozenConfig):
    """Where :func:`write_report` wrote, and what it found."""

    markdown: Path
    html: Path
    images: tuple[Path, ...]
    target_width: int | None
    verdict: str | None


def _sections(name: str, prediction, problem: str | None, confirmation, score=None
              ) -> list[tuple]:
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
                         f"{h.batch_size}; multipliers: {h.multipliers_text()}; hidden "
                         f"matrices: {prediction.hidden_lr()}"),
                   *_expectations(prediction),
                   ("image", "optimum"),
                   ("h3", "Rules applied"),
                   ("list", [f"{r.name}: {r.detail}" for r in prediction.rules] or ["none"]),
                   ("h3", "Warnings"),
                   ("list", list(prediction.warnings) or ["none"])]
    if confirmation is not None:
        c = confirmation
        regret = "n/a" if c.regret is None else f"{100 * c.regret:.2f}%"
        rows = [[f"{r.offset:+g}", f"{r.lr:.4g}", r.status.value,
                 "" if r.loss is None else f"{r.loss:.4f}",
                 "" if r.bits_per_byte is None else f"{r.bits_per_byte:.4f}"] for r in c.runs]
        blocks += [("h2", f"Confirmation at width {c.target_width}"),
                   ("p", f"Verdict: **{c.verdict.value}**, regret {regret} (tolerance "
                         f"{100 * c.tolerance:.2g}%)"),
                   ("table", (["offset (octaves)", "lr", "status", "val loss", "bits/byte"],
                              rows))]
        if c.notes:
            blocks.append(("list", list(c.notes)))
    elif prediction is not None:
        blocks += [("h2", "Confirmation"),
                   ("p", f"No confirmation runs yet: hptransfer confirm --target-width "
                         f"{prediction.target_width} --study {name}")]
    if score is not None:
        rows = [[f"{r.lr:.4g}", r.status, "" if r.loss is None else f"{r.loss:.4f}"]
                for r in score.baseline]
        blocks += [("h2", f"Score at width {score.target_width}: against a grid-tuned SP "
                          f"model"),
                   ("p", f"{score.summary()}. The SP model has the "
                         f"target's width, data, tokens and seed and the predicted λ and "
                         f"batch; only its parametrization and its LR (its own octave grid) "
                         f"differ."),
                   ("table", (["SP lr", "status", "val loss"], rows))]
    return blocks


def _expectations(prediction) -> list[tuple]:
    """The expected regret and the seed noise behind the interval, as paragraphs."""
    from hptransfer.transfer.regret import describe

    out = []
    if prediction.regret is not None:
        out.append(("p", describe(prediction.regret).capitalize() + "."))
    noise = prediction.evidence.seed_noise
    if noise is not None:
        out.append(("p", f"Seed noise {100 * noise.shape:.2f}% of a run's loss (measured on "
                         f"{noise.points} LRs run with two seeds at width "
                         f"{', '.join(map(str, noise.widths))}; the seeds' levels differ by "
                         f"{100 * noise.level:.2f}%), included in every LR interval."))
    return out


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
            lines += [markdown_table(*content), ""]
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
            out.append(html_table(*content))
    return "\n".join(out) + "\n"


def write_report(study: str = "proxy", *, storage: Any = None,
                 target_width: int | None = None, out_dir: str | Path = "reports") -> Report:
    """Write ``{study}_report.md``, ``{study}_report.html`` and the figures' PNGs.

    ``target_width`` defaults to the widest one with confirmation runs, if any; without a
    target width the report holds the µTransfer plot only. A study that cannot support a
    prediction gets a report saying why. Raises :class:`~hptransfer.errors.StudyError` when
    there is no such study.
    """
    from hptransfer.confirmation.runs import load_confirmation
    from hptransfer.confirmation.score import load_score
    from hptransfer.errors import PredictionError
    from hptransfer.study.attributes import confirmation_widths
    from hptransfer.study.names import open_storage_arg
    from hptransfer.study.records import load_trials
    from hptransfer.transfer import predict_hparams

    storage = open_storage_arg(storage)
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
    pngs = {"transfer": figure_png(transfer_figure(study, records, prediction=prediction,
                                                   confirmation=confirmation))}
    if prediction is not None:
        pngs["optimum"] = figure_png(optimum_figure(study, prediction, confirmation))
    images = {key: out / f"{study}_{key}.png" for key in pngs}
    score = None if target_width is None else load_score(study, target_width, storage)
    blocks = _sections(study, prediction, problem, confirmation, score)
    markdown, page = out / f"{study}_report.md", out / f"{study}_report.html"
    write_together({**{images[key]: data for key, data in pngs.items()},
                    markdown: _markdown(study, blocks, images),
                    page: _html(study, blocks, pngs)})
    return Report(markdown=markdown, html=page, images=tuple(images.values()),
                  target_width=target_width,
                  verdict=confirmation.verdict.value if confirmation else None)


def write_plot_page(name: str, records: list[TrialRecord], summaries: list[WidthSummary],
                    out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<name>_transfer.png`` and a self-contained ``<name>_plot.html`` (the plot and
    a table of the widths: trials by status, the best trial, the compute used)."""
    out = Path(out_dir)
    png = figure_png(transfer_figure(name, records))

    def best(s: WidthSummary, text) -> str:
        return "" if s.best_hparams is None else text(s.best_hparams)

    rows = [[str(s.width), str(s.finished), str(s.complete), str(s.diverged), str(s.pruned),
             "" if s.best_loss is None else f"{s.best_loss:.4f}",
             best(s, lambda h: f"{h.lr:.4g}"), best(s, lambda h: f"{h.weight_decay:.3g}"),
             best(s, lambda h: str(h.batch_size)), f"{s.flops:.3g}", f"{s.wall_time_s:.0f}"]
            for s in summaries]
    header = ["width", "finished", "complete", "diverged", "pruned", "best loss", "lr",
              "weight decay", "batch", "FLOPs", "seconds"]
    page = (f"<!doctype html><meta charset='utf-8'><title>{html.escape(name)}</title>"
            f"<h1>Study {html.escape(name)}</h1>"
            f"<img alt='validation loss vs learning rate per width' "
            f"src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            + html_table(header, rows))
    png_path, page_path = write_together({out / f"{name}_transfer.png": png,
                                          out / f"{name}_plot.html": page})
    return png_path, page_path

"""``hptransfer study run`` and ``hptransfer study table``: Lingle's ablations at CPU scale.

Definitions live in ``studies/`` (:mod:`hptransfer.reproduction.ablation`); running and tabulating
in
:mod:`hptransfer.reproduction.study`; docs/reproduction.md shows the table beside the paper's.
"""

from __future__ import annotations

import io
import shutil
import sys
from pathlib import Path

import click

from hptransfer.cli.app import main
from hptransfer.cli.options import fail, load_corpus_or_fail, threads_option


def _widths(ctx, param, text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        widths = tuple(int(w) for w in text.split(",") if w.strip())
    except ValueError:
        widths = ()
    if not widths or any(w <= 0 for w in widths):
        raise click.BadParameter(f"{text!r} is not a comma-separated list of positive "
                                 f"widths (example: 32,64)")
    return widths


@main.group()
def study() -> None:
    """Reproduce the µ-Transfer paper's ablations: run a study, print the table.

    Each study is studies/<name>.toml on top of studies/setting.toml; see
    docs/reproduction.md.
    """


@study.command("run")
@click.argument("definition")
@click.option("--storage", default=None,
              help="Optuna storage URL or file [default: $HPTRANSFER_HOME/studies.db]")
@click.option("--widths", default=None, callback=_widths,
              help="comma-separated widths instead of the setting's (width studies only)")
@click.option("--setting", "setting_path", type=click.Path(dir_okay=False), default=None,
              help="setting file instead of the definition folder's setting.toml")
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="folder of the recorded <name>.json [default: results/ beside the "
                   "definition]")
@threads_option
def run(definition, storage, widths, setting_path, results, threads) -> None:
    """Train a study's missing cells and record them.

    Every LR octave at every width (or depth, or budget) of DEFINITION, a path
    (studies/biases.toml) or a name in ./studies (biases). Trials go into the Optuna
    storage as study NAME (NAME.depth4 … for depth and steps studies); results/NAME.json is
    rewritten after each point. Running it again only trains what is missing.
    """
    from hptransfer.cli.studies import TrialProgress
    from hptransfer.reproduction.ablation import AblationError, load_study
    from hptransfer.reproduction.study import run_study
    from hptransfer.study.ledger import StudyError

    try:
        resolved = load_study(definition, setting=setting_path, widths=widths)
    except AblationError as error:
        fail(str(error))
    folder = Path(definition).parent if definition.endswith(".toml") else None
    results = Path(results) if results else (folder or _default_folder()) / "results"
    corpus = load_corpus_or_fail(resolved.setting.data)
    cells = len(resolved.points) * len(resolved.lr_exponents)
    click.echo(f"study {resolved.name}: {resolved.title} — {resolved.axis.value}s "
               f"{', '.join(map(str, resolved.values))} × α = 2^{resolved.lr_exponents[0]} … "
               f"2^{resolved.lr_exponents[-1]} ({cells} cells)")
    progress = TrialProgress(cells, quiet=False)
    try:
        result = run_study(resolved, results=results, storage=storage, corpus=corpus,
                           threads=threads, on_trial=progress.update)
    except (StudyError, ValueError) as error:
        progress.close()
        hint = (" (a study of this name made with another setting is in this storage: "
                "give another --storage)" if "different" in str(error) else "")
        fail(f"{error}{hint}")
    progress.close()
    click.echo(f"{len(result.cells)}/{result.planned} cells recorded: "
               f"{results / (resolved.name + '.json')}\n"
               f"table: hptransfer study table {resolved.name}")


def _default_folder() -> Path:
    from hptransfer.reproduction.ablation import default_folder

    return default_folder()


@study.command("table")
@click.argument("names", nargs=-1)
@click.option("--from-results", "from_results", is_flag=True,
              help="read the recorded results/<name>.json files [the default]")
@click.option("--storage", default=None,
              help="read the Optuna storage instead of the recorded results")
@click.option("--studies", "folder", type=click.Path(file_okay=False), default=None,
              help="folder of the definitions [default: ./studies, else the checkout's]")
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="folder of the recorded results [default: STUDIES/results]")
@click.option("--markdown", is_flag=True, help="print Markdown (what docs/reproduction.md "
                                               "shows)")
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="folder for each study's µTransfer plot")
def table(names, from_results, storage, folder, results, markdown, out) -> None:
    """Print the paper-style table of studies (default: all).

    Per study: loss per width × LR, the argmin per width, "Transfer: Yes" iff the argmin is
    the same at every width (the paper's rule), and the fitted drift of the LR optimum per
    doubling with its 95% interval. Studies not run yet are listed as such.
    """
    from hptransfer.reproduction.ablation import (
        AblationError,
        PaperVerdict,
        definition_files,
        load_study,
    )
    from hptransfer.reproduction.study import empty_result, load_result, tabulate, write_plot

    if from_results and storage:
        fail("give --from-results or --storage, not both")
    folder = Path(folder) if folder else _default_folder()
    results = Path(results) if results else folder / "results"
    try:
        studies = [load_study(name, folder=folder) for name in
                   (names or [p.stem for p in definition_files(folder)])]
    except AblationError as error:
        fail(str(error))
    if not studies:
        fail(f"no study definitions in {folder} (give --studies FOLDER)")
    if not names:  # the paper's ablations first, then the studies beyond it
        studies.sort(key=lambda s: (s.paper is PaperVerdict.ABSENT, s.name))
    tables, plots = [], []
    for resolved in studies:
        name = resolved.name
        if storage is not None:
            result = _from_storage(resolved, storage)
        elif (results / f"{name}.json").is_file():
            result = load_result(results / f"{name}.json")
        else:
            result = empty_result(resolved)
        tables.append(tabulate(result))
        if result.cells:
            plots.append(write_plot(tables[-1], out))
    render = _markdown if markdown else _text
    click.echo(render(tables))
    for path in plots:
        click.echo(f"plot: {path}", err=markdown)


def _from_storage(resolved, storage):
    from hptransfer.reproduction.study import result_from_storage
    from hptransfer.study.storage import StorageError, open_storage

    try:
        return result_from_storage(resolved, open_storage(storage))
    except StorageError as error:
        fail(str(error))


# ---- rendering --------------------------------------------------------------------------------

_PAPER = {"yes": "Yes", "no": "**No**", "used": "used", "absent": "—"}


def _paper(result) -> str:
    verdict = _PAPER[result.paper.value]
    return f"{verdict} ({result.paper_note})" if result.paper_note else verdict


def _exp(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"2^{value:.{digits}f}"


def _drift(t) -> str:
    if t.drift is None:
        return "—"
    low, high = t.drift_interval
    return f"{t.drift:+.2f} [{low:+.2f}, {high:+.2f}]"


def _summary_rows(tables) -> list[list[str]]:
    rows = []
    for t in tables:
        r = t.result
        argmins = " / ".join(_exp(row.argmin) for row in t.rows) if t.cells_done else "—"
        losses = [c.val_loss for c in r.cells if c.val_loss is not None]
        minutes = sum(c.wall_time_s for c in r.cells) / 60
        rows.append([r.name, r.title, _paper(r), t.verdict, argmins, _coarse(t), _drift(t),
                     f"{min(losses):.4f}" if losses else "—",
                     f"{minutes:.1f} min" if r.cells else "—"])
    return rows


_SUMMARY = ["study", "ablation", "paper", "ours: same argmin", "argmin per value",
            "same argmin, 2-octave grid", "drift per doubling [95%]", "best loss", "run time"]


def _coarse(t) -> str:
    """The paper's rule on every other LR of the grid (its points were 2 octaves apart)."""
    if t.coarse_transfer is None:
        return "—"
    if t.coarse_transfer:
        return "Yes"
    return "No: " + " / ".join(_exp(row.coarse_argmin) for row in t.rows)


def _cell_text(cell, best: bool) -> str:
    if cell is None:
        return "·"
    if cell.val_loss is None:
        return {"diverged": "div.", "error": "err."}.get(cell.status.value, cell.status.value)
    text = f"{cell.val_loss:.4f}"
    return f"**{text}**" if best else text


def _grid(t) -> tuple[list[str], list[list[str]]]:
    r = t.result
    header = [r.axis.value] + [f"2^{e}" for e in r.lr_exponents] + ["argmin", "fitted [95%]"]
    rows = []
    for row in t.rows:
        fitted = "—" if row.optimum is None else (
            f"{_exp(row.optimum, 2)} [{row.optimum_interval[0]:.2f}, "
            f"{row.optimum_interval[1]:.2f}]")
        rows.append([str(row.value)] + [_cell_text(row.cells.get(e), e == row.argmin)
                                        for e in r.lr_exponents]
                    + [_exp(row.argmin), fitted])
    return header, rows


def _verdict_line(t) -> str:
    r = t.result
    if t.transfer is None:
        return f"Transfer: {t.verdict}"
    same = (f"argmin {_exp(t.rows[0].argmin)} at every {r.axis.value}" if t.transfer
            else f"argmin moves with {r.axis.value}")
    coarse = (f"argmin {_exp(t.rows[0].coarse_argmin)} at every {r.axis.value}"
              if t.coarse_transfer else "argmin moves")
    return (f"Transfer: {t.verdict} ({same}); on every other LR (the paper's 2-octave "
            f"spacing): {'Yes' if t.coarse_transfer else 'No'} ({coarse}); fitted drift "
            f"{_drift(t)} octave per doubling of {r.axis.value}; paper: {_paper(r)}")


def _markdown(tables) -> str:
    def table_md(header, rows):
        return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                         + ["| " + " | ".join(row) + " |" for row in rows])

    parts = [table_md(_SUMMARY, _summary_rows(tables))]
    for t in tables:
        if not t.cells_done:
            continue
        r = t.result
        parts.append(f"#### {r.name}: {r.title}\n\n" + table_md(*_grid(t)) + "\n\n"
                     + _verdict_line(t) + "".join(f"\n- {r.axis.value} {row.value}: {f}"
                                                  for row in t.rows for f in row.flags))
    return "\n\n".join(parts)


def _text(tables) -> str:
    from rich.console import Console
    from rich.table import Table

    # rendered into a string; rich wraps at 80 columns when stdout is not a terminal
    console = Console(file=io.StringIO(), width=shutil.get_terminal_size((160, 24)).columns
                      if sys.stdout.isatty() else 160)

    def show(title, header, rows, left=0):
        table = Table(title=title)
        for i, column in enumerate(header):
            table.add_column(column, justify="left" if i < left else "right")
        for row in rows:
            table.add_row(*(cell.replace("**", "") for cell in row))
        console.print(table)

    show("µ-Transfer ablations (Lingle 2024) at CPU scale", _SUMMARY, _summary_rows(tables),
         left=4)
    for t in tables:
        if t.cells_done:
            show(f"{t.result.name}: {t.result.title}", *_grid(t))
            console.print(_verdict_line(t).replace("**", ""))
            for row in t.rows:
                for flag in row.flags:
                    console.print(f"  {t.result.axis.value} {row.value}: {flag}")
    return console.file.getvalue().rstrip()

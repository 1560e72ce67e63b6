"""``hptransfer study run`` and ``hptransfer study table``: Lingle's ablations at CPU scale.

Definitions, runs and the table live in :mod:`hptransfer.reproduction`; docs/reproduction.md
shows the table beside the paper's.
"""

from __future__ import annotations

from pathlib import Path

import click

from hptransfer.cli.app import main
from hptransfer.cli.options import (
    check_out,
    fail,
    storage_option,
    threads_option,
    widths_option,
)


def _check_model(model: str) -> None:
    """The family ``--model`` names resolves (before a study is named after it)."""
    from hptransfer.models.registry import family_of
    from hptransfer.spec import ModelSpec

    family_of(ModelSpec(model=model))


@main.group()
def study() -> None:
    """Reproduce the µ-Transfer paper's ablations: run a study, print the table.

    Each study is studies/<name>.toml on top of studies/setting.toml; see
    docs/reproduction.md.
    """


@study.command("run")
@click.argument("definition")
@storage_option()
@click.option("--widths", default=None, callback=widths_option(),
              help="comma-separated widths instead of the setting's (width studies only)")
@click.option("--setting", "setting_path", type=click.Path(dir_okay=False), default=None,
              help="setting file instead of the definition folder's setting.toml")
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="folder of the recorded <name>.json [default: results/ beside the "
                   "definition]")
@click.option("--model", default=None,
              help="run the study on this model family (docs/models.md); its result is "
                   "recorded as NAME-MODEL [default: the setting's, the built-in model]")
@threads_option
def run(definition, storage, widths, setting_path, results, model, threads) -> None:
    """Train a study's missing cells and record them.

    Every LR octave at every width (or depth, or budget) of DEFINITION, a path
    (studies/biases.toml) or a name in ./studies (biases). Trials go into the Optuna
    storage as study NAME (NAME.depth4 … for depth and steps studies); results/NAME.json is
    rewritten after each point. Running it again only trains what is missing.
    """
    from hptransfer.cli.studies import TrialProgress
    from hptransfer.data.corpus import load_corpus
    from hptransfer.errors import StudyError
    from hptransfer.reproduction.ablation import default_folder, load_study
    from hptransfer.reproduction.study import run_study

    check_out(results, folder=True)
    if model is not None:
        _check_model(model)
    resolved = load_study(definition, setting=setting_path, widths=widths, model=model)
    folder = Path(definition).parent if definition.endswith(".toml") else None
    results = Path(results) if results else (folder or default_folder()) / "results"
    corpus = load_corpus(resolved.setting.source)
    cells = len(resolved.points) * len(resolved.lr_exponents)
    click.echo(f"study {resolved.name}: {resolved.title} — {resolved.axis.value}s "
               f"{', '.join(map(str, resolved.values))} × α = 2^{resolved.lr_exponents[0]} … "
               f"2^{resolved.lr_exponents[-1]} ({cells} cells)")
    progress = TrialProgress(cells, quiet=False)
    try:
        result = run_study(resolved, results=results, storage=storage, corpus=corpus,
                           threads=threads, on_trial=progress.update)
    except StudyError as error:
        hint = (" (a study of this name made with another setting is in this storage: "
                "give another --storage)" if "different" in str(error) else "")
        fail(f"{error}{hint}")
    finally:
        progress.close()
    click.echo(f"{len(result.cells)}/{result.planned} cells recorded: "
               f"{results / (resolved.name + '.json')}\n"
               f"table: hptransfer study table {Path(definition).stem}"
               + (f" --model {model}" if model else ""))


@study.command("table")
@click.argument("names", nargs=-1)
@click.option("--from-results", "from_results", is_flag=True,
              help="read the recorded results/<name>.json files [the default]")
@storage_option(help="read this Optuna storage instead of the recorded results")
@click.option("--studies", "folder", type=click.Path(file_okay=False), default=None,
              help="folder of the definitions [default: ./studies, else the checkout's]")
@click.option("--results", type=click.Path(file_okay=False), default=None,
              help="folder of the recorded results [default: STUDIES/results]")
@click.option("--markdown", "as_markdown", is_flag=True,
              help="print Markdown (what docs/reproduction.md shows)")
@click.option("--out", type=click.Path(file_okay=False), default="reports", show_default=True,
              help="folder for each study's µTransfer plot")
@click.option("--model", default=None,
              help="the studies as run with study run --model (NAME-MODEL results)")
def table(names, from_results, storage, folder, results, as_markdown, out, model) -> None:
    """Print the paper-style table of studies (default: all).

    Per study: loss per width × LR, the argmin per width, "Transfer: Yes" iff the argmin is
    the same at every width (the paper's rule), and the fitted drift of the LR optimum per
    doubling with its 95% interval. Studies not run yet are listed as such.
    """
    from hptransfer.reproduction.ablation import (
        PaperVerdict,
        default_folder,
        definition_files,
        load_study,
    )
    from hptransfer.reproduction.study import empty_result, load_result, result_from_storage
    from hptransfer.reproduction.table import markdown, tabulate, text, write_plot
    from hptransfer.study.storage import Access, open_storage

    if from_results and storage:
        fail("give --from-results or --storage, not both")
    check_out(out, folder=True)
    if results is not None and not Path(results).is_dir():
        fail(f"--results {results} is not a folder of recorded results")
    if model is not None:
        _check_model(model)
    folder = Path(folder) if folder else default_folder()
    results = Path(results) if results else folder / "results"
    studies = [load_study(name, folder=folder, model=model) for name in
               (names or [p.stem for p in definition_files(folder)])]
    if not studies:
        fail(f"no study definitions in {folder} (give --studies FOLDER)")
    if not names:  # the paper's ablations first, then the studies beyond it
        studies.sort(key=lambda s: (s.paper is PaperVerdict.ABSENT, s.name))
    tables, plots = [], []
    for resolved in studies:
        name = resolved.name
        if storage is not None:
            result = result_from_storage(resolved, open_storage(storage, Access.READ))
        elif (results / f"{name}.json").is_file():
            result = load_result(results / f"{name}.json")
        else:
            result = empty_result(resolved)
        tables.append(tabulate(result))
        if result.cells:
            plots.append(write_plot(tables[-1], out))
    click.echo((markdown if as_markdown else text)(tables))
    for path in plots:
        click.echo(f"plot: {path}", err=as_markdown)

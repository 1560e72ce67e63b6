"""``hptransfer cache``: the token cache that tables and tokenized text are streamed into
(:mod:`hptransfer.data.cache`)."""

from __future__ import annotations

import time

import click

from hptransfer.cli.app import main


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # (the loop returns at GB)


@main.group()
def cache() -> None:
    """The token cache: Parquet/Arrow tables and tokenized text, streamed once into flat ids
    under $HPTRANSFER_HOME/cache/tokens (docs/data.md). An entry of a changed source is
    removed when the source is cached again; these commands show and remove the rest."""


@cache.command("list")
def list_entries() -> None:
    """Each entry: its size, age and source files (stale: a source changed or is gone)."""
    from hptransfer.data.cache import cache_root, entries

    found = entries()
    if not found:
        click.echo(f"the token cache {cache_root()} is empty")
        return
    for entry in found:
        age = "" if entry.created is None else f"{(time.time() - entry.created) / 86400:.1f} d"
        sources = ", ".join(s["path"] for s in entry.sources) or "?"
        click.echo(f"{entry.folder.name}  {_size(entry.bytes):>9}  {age:>7}  "
                   f"{'stale  ' if entry.stale else ''}{sources}")
    click.echo(f"{len(found)} entries, {_size(sum(e.bytes for e in found))} in {cache_root()}")


@cache.command("clear")
@click.option("--stale", is_flag=True,
              help="only entries whose source files changed or are gone")
@click.option("--older-than", type=click.FloatRange(min=0), default=None, metavar="DAYS",
              help="only entries written more than DAYS ago")
def clear_entries(stale: bool, older_than: float | None) -> None:
    """Remove cache entries (all of them unless --stale / --older-than choose). A process
    reading an entry keeps reading it; the next load of its source streams it again."""
    from hptransfer.data.cache import clear, entries

    now = time.time()
    chosen = [e for e in entries()
              if (not stale or e.stale)
              and (older_than is None or e.created is None
                   or now - e.created > older_than * 86400)]
    removed = clear(chosen)
    click.echo(f"removed {len(removed)} entries ({_size(sum(e.bytes for e in removed))})")

"""The one table renderer: a header and rows of cells as a Markdown or an HTML table."""

from __future__ import annotations

import html

__all__ = ["html_table", "markdown_table"]


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table (cells are written as they are)."""
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
                      *("| " + " | ".join(row) + " |" for row in rows)])


def html_table(header: list[str], rows: list[list[str]]) -> str:
    """An HTML table; every cell is escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table border=1 cellpadding=4><tr>{head}</tr>{body}</table>"

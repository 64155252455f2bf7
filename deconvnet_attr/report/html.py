"""The report's markup: tables (from cells or from a :class:`~deconvnet_attr.tables.RecordTable`),
paragraphs, and the page that puts the sections together."""

from __future__ import annotations

import html
from collections.abc import Sequence

from deconvnet_attr.tables import RecordTable

from .context import Section

__all__ = ["html_table", "paragraph", "record_table", "render_page"]

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f3f3f3; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
footer { color: #666; font-size: 0.85em; margin-top: 3em; }
"""


def html_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> str:
    """A plain HTML table; cells are escaped."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def record_table(table: RecordTable) -> str:
    """``table`` (an accuracy, probe or correspondence table) as an HTML table of its records."""
    header, *rows = table.records()
    return html_table(header, rows)


def paragraph(text: str) -> str:
    """``text`` as an escaped HTML paragraph."""
    return f"<p>{html.escape(text)}</p>"


def render_page(
    title: str, built: Sequence[tuple[Section, float]], footer: str, header: str = ""
) -> str:
    """The whole HTML page: ``title``, ``header`` (HTML, e.g. the link to the unit atlas), a
    table of contents, each ``(section, seconds it took)`` and a footer line (``footer`` is HTML,
    already escaped)."""
    toc = "".join(
        f'<li><a href="#s{i}">{html.escape(s.title)}</a></li>' for i, (s, _) in enumerate(built)
    )
    parts = [
        f'<section id="s{i}"><h2>{html.escape(s.title)}</h2>\n{s.body}\n'
        f'<p class="timing">({seconds:.1f} s)</p></section>'
        for i, (s, seconds) in enumerate(built)
    ]
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>{header}<ol>{toc}</ol>\n"
        + "\n".join(parts)
        + f"\n<footer>{footer}</footer></body></html>\n"
    )

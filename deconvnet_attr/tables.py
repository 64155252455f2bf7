"""Result tables as records, markdown and CSV text, shared by the ablation study, the linear probe,
the correspondence analysis and the report (which renders :meth:`RecordTable.records` as HTML)."""

from __future__ import annotations

import csv
import io


class RecordTable:
    """Mixin: a class with ``_records() -> [header, *rows]`` (lists of strings) gets
    ``records()``, ``to_markdown()`` and ``to_csv()``."""

    def _records(self) -> list[list[str]]:
        raise NotImplementedError

    def records(self) -> list[list[str]]:
        """The table's cells as ``[header, *rows]``, each a fresh list of strings."""
        return [list(row) for row in self._records()]

    def to_markdown(self) -> str:
        """A GitHub markdown table."""
        header, *body = self._records()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in body]
        return "\n".join(lines)

    def to_csv(self) -> str:
        """The same table as CSV text."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(self._records())
        return buffer.getvalue()

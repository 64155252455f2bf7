"""Result tables as markdown and CSV text, shared by the ablation study and the linear probe."""

from __future__ import annotations

import csv
import io


class RecordTable:
    """Mixin: a class with ``_records() -> [header, *rows]`` (lists of strings) gets
    ``to_markdown()`` and ``to_csv()``."""

    def _records(self) -> list[list[str]]:
        raise NotImplementedError

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

"""Plain-text tables and counts for the command-line tool's human output."""

from __future__ import annotations

from collections.abc import Collection, Sequence


def table(rows: Sequence[Sequence[str]], *, right: Collection[int] = ()) -> list[str]:
    """Columns two spaces apart, left-aligned except the ``right`` ones (numbers), trailing
    spaces stripped. The first row is the header."""
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]

    def cell(column: int, value: str) -> str:
        if column in right:
            return value.rjust(widths[column])
        return value.ljust(widths[column])

    return ["  ".join(cell(i, value) for i, value in enumerate(row)).rstrip() for row in rows]


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"

"""Row tables for the CLI: a rich table on a terminal; elsewhere (a file, a pipe, CI logs, cron mail)
plain lines, one per row, with every value whole, so a log always says which row failed."""
from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text


def print_table(console, title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """`rows` (cells may hold rich markup such as `[red]bad[/red]`) under `columns`, in the order given."""
    if console.is_terminal:
        from rich.table import Table

        table = Table(title=title)
        for column in columns:
            table.add_column(column)
        for row in rows:
            table.add_row(*row)
        console.print(table)
        return
    # Tab-separated, markup dropped and never wrapped or cut at the console's width.
    lines = [title, "\t".join(columns), *("\t".join(_one_line(Text.from_markup(cell).plain) for cell in row) for row in rows)]
    # Written to the console's file itself: rich would expand the tabs into spaces.
    console.file.write("".join(f"{line}\n" for line in lines))


def _one_line(cell: str) -> str:
    # A value's own line breaks or tabs would split its row or shift its columns.
    return " ".join(cell.replace("\t", " ").splitlines())

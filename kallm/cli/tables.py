"""Tables that never lose data: at 80 columns, and piped (where rich assumes 80 columns),
a value that does not fit wraps inside its cell instead of being cut with an ellipsis."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.table import Table


def folded(table: Table) -> Table:
    for column in table.columns:
        column.overflow = "fold"
        column.no_wrap = False
    return table

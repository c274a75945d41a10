"""What users see: progress bars on long work and a summary table at the end."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any

from tqdm import tqdm


def progress(total: int | None, desc: str, unit: str = "rows"):
    """A tqdm bar on stderr; hidden automatically when stderr is not a terminal."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=None, file=sys.stderr, leave=False)


def human(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, title: str | None = None) -> str:
    """Format rows as a plain-text table (right-aligned numbers)."""
    cells = [[human(v) for v in row] for row in rows]
    if header:
        cells.insert(0, list(header))
    if not cells:
        return ""
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(max(map(len, cells)))]
    lines = []
    if title:
        lines.append(title)
    for n, row in enumerate(cells):
        lines.append("  ".join(text.ljust(widths[i]) for i, text in enumerate(row)).rstrip())
        if header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

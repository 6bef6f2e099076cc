"""The one fixed-width text table of the project (`elastic info`, the demo's report).

Pure Python, no torch: `elastic info` prints through it without importing the model side.
A column is a header plus how to align it; cells are already-formatted strings, so each
caller decides the units (MFLOPs, %, ms) and this module only lines them up.
"""

from __future__ import annotations

from collections.abc import Sequence

LEFT, RIGHT = "<", ">"


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None) -> str:
    """Rows of strings under headers, each column as wide as its widest cell.

    Args:
        headers: column titles.
        rows: one sequence of cells per row, as many as headers.
        align: "<" or ">" per column; default right-aligned except the last column (often
            a free-text description), which is left-aligned.

    Returns:
        The table, lines joined by newlines, trailing spaces stripped.
    """
    n = len(headers)
    if align is None:
        align = [RIGHT] * (n - 1) + [LEFT]
    if len(align) != n or any(a not in (LEFT, RIGHT) for a in align):
        raise ValueError(f"align needs one of '<' / '>' per column ({n}), got {list(align)}")
    for r in rows:
        if len(r) != n:
            raise ValueError(f"a row has {len(r)} cells for {n} columns: {list(r)}")
    widths = [max([len(h), *(len(r[c]) for r in rows)]) for c, h in enumerate(headers)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(line, align, widths, strict=True)).rstrip() for line in lines
    )

"""Shared by the benchmark scripts: the printed table."""

from __future__ import annotations


def table(headers: list[str], rows: list[list[object]]) -> str:
    """Right-aligned columns under a header and a rule, as every benchmark prints its results."""
    cells = [headers] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    out = ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)

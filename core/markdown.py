"""Markdown tables for vqgen's reports (the pipeline's report.md, `vqgen fid`'s report).

    table([("FID", 12.3456), ("KID", None)])   # ["| metric | value |", "|---|---|", "| FID | 12.35 |", "| KID | — |", ""]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def cell(value: Any, float_format: str = ".4g") -> str:
    """One value as a table cell: a float in `float_format`, None (not measured) as a dash."""
    if isinstance(value, float):
        return format(value, float_format)
    return "—" if value is None else str(value)


def table(rows: Iterable[tuple[str, Any]], float_format: str = ".4g", header: tuple[str, str] = ("metric", "value"),
          ) -> list[str]:
    """A two-column Markdown table of (name, value) rows, as lines ending with a blank one."""
    return [f"| {header[0]} | {header[1]} |", "|---|---|",
            *(f"| {name} | {cell(value, float_format)} |" for name, value in rows), ""]

"""Tables: one per metric, systems as rows, N (or a variant) as columns, each cell the median of the
runs with [min..max], and for every row that is not ours its ratio to our median in that column.
Printed as Markdown, or as JSON with every run's value.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Cell:
    values: list[float] = field(default_factory=list)
    status: str = "ok"  # ok | hung | skipped | error | na
    note: str = ""
    extras: dict[str, list[float]] = field(default_factory=dict)  # e.g. overshoot, survivors per run

    def add(self, value: float, **extras: float | None) -> None:
        self.values.append(value)
        for name, extra in extras.items():
            if extra is not None:
                self.extras.setdefault(name, []).append(extra)

    @property
    def median(self) -> float | None:
        return statistics.median(self.values) if self.values else None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status, "runs": self.values}
        if self.values:
            out |= {"median": self.median, "min": min(self.values), "max": max(self.values)}
        if self.note:
            out["note"] = self.note
        for name, values in self.extras.items():
            out[name] = {"runs": values, "median": statistics.median(values), "min": min(values), "max": max(values)}
        return out


@dataclass
class Row:
    label: str
    kind: str  # ours | peer | floor
    cells: dict[str, Cell] = field(default_factory=dict)


@dataclass
class Table:
    key: str
    title: str
    unit: str  # ms | count | cores | MiB | items/s | MB/s | ns
    columns: list[str]
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    ratio_on: str | None = None  # an extra (e.g. "over") to take the ratio of, instead of the main value

    def row(self, label: str, kind: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        self.rows.append(Row(label, kind))
        return self.rows[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "title": self.title,
            "unit": self.unit,
            "columns": self.columns,
            "ratio_on": self.ratio_on,
            "notes": self.notes,
            "rows": [
                {
                    "label": r.label,
                    "kind": r.kind,
                    "cells": {c: {**cell.to_dict(), "ratio_to_ours": self.ratio(r, c)} for c, cell in r.cells.items()},
                }
                for r in self.rows
            ],
        }

    def ours(self, column: str) -> float | None:
        """Our figure in this column: the first of our rows (the others are variants)."""
        for r in self.rows:
            if r.kind == "ours" and column in r.cells and r.cells[column].status == "ok":
                return self._value(r.cells[column])
        return None

    def ratio(self, row: Row, column: str) -> float | None:
        """This row's median over ours, in the same column (None for our own rows)."""
        cell, ours = row.cells.get(column), self.ours(column)
        if row.kind == "ours" or cell is None or ours is None or cell.status != "ok":
            return None
        mine = self._value(cell)
        if mine is None or mine <= 0 or ours <= 0:
            return None
        return mine / ours

    def _value(self, cell: Cell) -> float | None:
        if self.ratio_on is None:
            return cell.median
        values = cell.extras.get(self.ratio_on)
        return statistics.median(values) if values else None


def fmt(value: float, unit: str) -> str:
    if unit == "count":
        return f"{value:g}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1 or unit in ("ms", "MiB", "ns"):
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell_text(table: Table, row: Row, column: str) -> str:
    cell = row.cells.get(column)
    if cell is None:
        return ""
    if cell.status != "ok" or not cell.values:
        word = {"hung": "**hung**", "na": "n/a"}.get(cell.status, cell.status)
        return f"{word} {cell.note}".strip()
    lo, hi, med = min(cell.values), max(cell.values), cell.median
    assert med is not None
    text = fmt(med, table.unit)
    if len(cell.values) > 1:
        text += f" [{fmt(lo, table.unit)}..{fmt(hi, table.unit)}]"
    ratio = table.ratio(row, column)
    ratio_text = "" if ratio is None else f" ({ratio:.2f}x)"
    if table.ratio_on is None:
        text += ratio_text
    for name, values in cell.extras.items():
        text += "; " + _extra_text(name, values, table.unit)
        if name == table.ratio_on:
            text += ratio_text
    if cell.note:
        text += f" {cell.note}"
    return text


def _extra_text(name: str, values: list[float], unit: str) -> str:
    """``over +18 [12..25]`` for an overshoot in ms, ``left 8`` for survivors, ``workers 93.1``."""
    if name == "left":
        lo, hi = min(values), max(values)
        return f"left **{hi:g}**" if lo == hi and hi else (f"left {hi:g}" if lo == hi else f"left {lo:g}..{hi:g}")
    med = statistics.median(values)
    sign = "+" if name == "over" and med >= 0 else ""
    text = f"{name} {sign}{fmt(med, unit)}"
    if len(values) > 1:
        text += f" [{fmt(min(values), unit)}..{fmt(max(values), unit)}]"
    return text


def render(table: Table, runs_note: str) -> str:
    lines = [f"### {table.title} ({table.unit}; {runs_note})", ""]
    lines.append("| | " + " | ".join(table.columns) + " |")
    lines.append("|---|" + "---|" * len(table.columns))
    for row in table.rows:
        cells = [_cell_text(table, row, c) for c in table.columns]
        lines.append(f"| {row.label} | " + " | ".join(cells) + " |")
    lines.extend(f"\n{note}" for note in table.notes)
    return "\n".join(lines)


def render_all(tables: list[Table], header: str, runs_note: str) -> str:
    legend = (
        "Each cell: median [min..max] of the runs; (Nx) is that row's median over ours in the same column "
        + "(for times and memory, above 1 means slower or bigger than ours)."
    )
    return "\n\n".join([header, legend, *(render(t, runs_note) for t in tables if t.rows)]) + "\n"


def to_json(tables: list[Table], meta: dict[str, Any]) -> str:
    return json.dumps({**meta, "tables": [t.to_dict() for t in tables if t.rows]}, indent=2)


def _cell_from(data: dict[str, Any]) -> Cell:
    extras = {k: v["runs"] for k, v in data.items() if isinstance(v, dict) and "runs" in v}
    return Cell(values=list(data["runs"]), status=data["status"], note=data.get("note", ""), extras=extras)


def from_json(data: dict[str, Any]) -> list[Table]:
    """The tables of a ``--json`` output, to render them again."""
    tables = []
    for t in data["tables"]:
        table = Table(t["key"], t["title"], t["unit"], t["columns"], notes=t["notes"])
        table.ratio_on = t.get("ratio_on", "over" if t["key"].startswith("teardown") else None)
        for r in t["rows"]:
            row = table.row(r["label"], r["kind"])
            row.cells = {c: _cell_from(cell) for c, cell in r["cells"].items()}
        tables.append(table)
    return tables

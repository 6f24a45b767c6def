"""The table of figures: rows, ratios, goals, and their markdown and JSON forms."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Row:
    """One figure for both servers; `better` says which direction wins."""

    metric: str
    enrich: float | None
    modules: float | None
    unit: str = ""
    better: str = "higher"  # higher | lower | none
    goal: str = ""
    met: bool | None = None

    @property
    def ratio(self) -> float | None:
        """Return how many times better misp-enrich is (above 1: it wins)."""
        if self.better == "none" or self.enrich is None or self.modules is None:
            return None
        if self.better == "higher":
            return self.enrich / self.modules if self.modules else None
        return self.modules / self.enrich if self.enrich else None


def number(value: float | None, unit: str = "") -> str:
    """Format a figure with as many digits as its size deserves."""
    if value is None:
        return "-"
    if float(value).is_integer() and not unit:
        # Counts read better without decimals.
        return f"{int(value):,}"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def ratio_text(ratio: float | None) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


def verdict(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: ""}[met]


def markdown_table(rows: list[Row]) -> str:
    """Render the rows as a markdown table."""
    lines = [
        "| metric | misp-enrich | misp-modules | ratio | goal | |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        cells = [
            row.metric,
            number(row.enrich, row.unit),
            number(row.modules, row.unit),
            ratio_text(row.ratio),
            row.goal,
            verdict(row.met),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def simple_table(header: list[str], body: list[list[str]]) -> str:
    """Render any list of string rows as a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def as_json(rows: list[Row], extra: dict[str, Any]) -> str:
    """Return the rows (with their ratios) and the run's details as JSON."""
    table = [{**asdict(row), "ratio": row.ratio} for row in rows]
    return json.dumps({"table": table, **extra}, indent=2, default=str)

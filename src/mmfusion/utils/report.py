"""Printing and saving the final metrics."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def metrics_table(title: str, metrics: dict[str, float], keys: list[str] | None = None) -> Table:
    table = Table(title=title, show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys or sorted(metrics):
        if k in metrics:
            v = metrics[k]
            table.add_row(k, "nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
    return table


def print_metrics(title: str, metrics: dict[str, float], keys: list[str] | None = None) -> None:
    Console().print(metrics_table(title, metrics, keys))


def write_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Rows of dicts as CSV; the header is the union of their keys in first-seen order."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with Path(path).open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)


def save_json(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float))

"""Shared command line of the speed benchmarks: figures as a table against targets, or JSON."""
from __future__ import annotations

import argparse
import json
from typing import Callable


def main(doc: str, title: str, run: Callable[[int], dict], targets: dict[str, float], repeats: int) -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--repeats", type=int, default=repeats, help="runs per figure; the median is reported")
    args = parser.parse_args()
    figures = run(args.repeats)
    if args.json:
        print(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title=title)
    for col in ("figure", "value", "target"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for name, value in figures.items():
        target = targets.get(name)
        table.add_row(name, str(value), "" if target is None else f"<= {target} {'ok' if value <= target else 'MISS'}")
    Console(width=100).print(table)

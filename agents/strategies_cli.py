"""`cubepilot strategies`: the seed library as a user reads it, each family's recipe and knob
space beside its measured figures (from the figures file), and `--measure`, which evaluates
every reference kernel through the cascade with a progress bar and records what it found.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evaluator.tasks import get_task
from evaluator.tasks.base import Shape
from hwmodel.errors import HwError
from hwmodel.spec import MachineSpec, load_machine
from strategies.families import Family
from strategies.figures import FigureStore, LibraryFigure, measure


@dataclass(frozen=True)
class Row:
    """One line of the listing: a family and one of its figures (None: never measured)."""
    family: Family
    figure: LibraryFigure | None = None
    stale: str = ""                     # why the figure is no longer current ('' when it is)


def measure_all(families: list[Family], machine: MachineSpec, shapes: dict[str, Shape], store: FigureStore,
                seed: int | None, console: Console, quiet: bool) -> list[Row]:
    """Measure each family's reference kernel, recording each figure as it finishes; Ctrl-C stops
    after the figures recorded so far (fewer rows than families)."""
    store.load()                                # an unreadable figures file fails before any time is spent
    if not quiet:
        at: dict[str, list[str]] = {}
        for task, shape in shapes.items():
            at.setdefault(get_task(task).format_shape(shape), []).append(task)
        kernels = f"{len(families)} reference kernel{'s' if len(families) != 1 else ''}"
        console.print(f"measuring {kernels} on {machine.name} at "
                      + " and ".join(f"{shape} ({', '.join(tasks)})" for shape, tasks in at.items())
                      + f"; figures go to {store.path}", highlight=False)
    rows = []
    columns = [TextColumn("[bold]{task.description:<26}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[last]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=quiet) as bar:
        tid = bar.add_task("measuring", total=len(families), last="")
        try:
            for family in families:
                bar.update(tid, description=family.name)
                figure = measure(family, get_task(family.task), machine, shapes[family.task], seed)
                store.record(figure)
                rows.append(Row(family, figure))
                r = figure.result
                bar.update(tid, advance=1, last=f"{family.name}: {r.status.value}"
                           + (f" {r.tflops:.1f} TFLOP/s" if r.ok else ""))
            bar.update(tid, description="measured")
        except KeyboardInterrupt:
            bar.update(tid, description="stopped")
    return rows


def listing(families: list[Family], store: FigureStore, machine: str | None, shape: str | None) -> list[Row]:
    """Each family with its recorded figures (filtered to a machine and shape when given), stale ones marked."""
    figures = [f for f in store.load() if (machine is None or f.machine == machine) and (shape is None or f.shape == shape)]
    specs: dict[str, MachineSpec | None] = {}
    rows = []
    for family in families:
        mine = sorted((f for f in figures if f.family == family.name), key=lambda f: (f.machine, f.shape))
        if not mine:
            rows.append(Row(family))
        for figure in mine:
            if figure.machine not in specs:
                try:
                    specs[figure.machine] = load_machine(figure.machine)
                except HwError:
                    specs[figure.machine] = None       # a TOML machine not at hand: check the kernel only
            rows.append(Row(family, figure, figure.stale_reason(family.source, get_task(family.task),
                                                                specs[figure.machine])))
    return rows


def _knobs(family: Family) -> str:
    return ", ".join(f"{k} {'/'.join(str(v) for v in values)}" for k, values in family.space.items())


def _when(figure: LibraryFigure) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(figure.measured_at))


def remeasure(task: str, machine: str | None = None, shape: str | None = None) -> str:
    """The command that records the figures a listing lacks."""
    return (f"cubepilot strategies --measure --task {task}" + (f" --machine {machine}" if machine else "")
            + (f" --shape {shape}" if shape else ""))


def print_rows(console: Console, rows: list[Row], figures_path: str, measured_now: bool,
               machine: str | None = None, shape: str | None = None) -> None:
    """Per task: a table of figures, then each family's recipe and knobs with why it failed, if it did.

    `machine` and `shape` are the listing's filters, named in the hint when a task has no figures."""
    for task_name in dict.fromkeys(r.family.task for r in rows):
        mine = [r for r in rows if r.family.task == task_name]
        console.print(f"\n[bold]{task_name}[/]: {escape(get_task(task_name).description)}", highlight=False)
        if any(r.figure for r in mine):
            console.print(_figures_table(mine))
        else:
            where = (f" on {machine}" if machine else "") + (f" at {shape}" if shape else "")
            console.print(f"[dim]no figures recorded{where}: {remeasure(task_name, machine, shape)}[/]\n")
        details = Table.grid(padding=(0, 2))
        details.add_column(no_wrap=True, style="bold")
        details.add_column()
        for family in {r.family.name: r.family for r in mine}.values():
            lines = [escape(family.summary), f"[dim]knobs {escape(_knobs(family))}[/]"]
            lines += [_note(r) for r in mine if r.family.name == family.name and _note(r)]
            details.add_row(f"  {family.name}", "\n".join(lines) + "\n")
        console.print(details)
    origin = "measured just now" if measured_now else "as recorded by `cubepilot strategies --measure`"
    console.print(f"[dim]Figures: each family's reference kernel through the full evaluation cascade, {origin}, "
                  f"kept in {escape(figures_path)}. At small shapes cores sit idle and fixed costs weigh: compare "
                  "families at one shape, and `cubepilot eval` a kernel at the benchmark shape for its real figure.[/]")


def _figures_table(rows: list[Row]) -> Table:
    measured = [r.figure for r in rows if r.figure is not None]
    places = sorted({(f.machine, f.shape) for f in measured})
    times = sorted(_when(f) for f in measured)
    title = (f"on {places[0][0]} at {places[0][1]}, " if len(places) == 1 else "") + "measured " + (
        times[0] if times[0] == times[-1] else f"{times[0]} to {times[-1]}")
    table = Table(title=f"[dim]{title}[/]", title_justify="left", box=box.SIMPLE_HEAD)
    table.add_column("family", no_wrap=True)
    if len(places) > 1:
        table.add_column("on", no_wrap=True)
    table.add_column("status", no_wrap=True)
    for col in ("TFLOP/s", "% roofline"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("worst error / budget")                  # left-justified: the numbers line up
    for i, r in enumerate(rows):
        where = [f"{r.figure.machine} {r.figure.shape}" if r.figure else ""] if len(places) > 1 else []
        repeated = i and rows[i - 1].family.name == r.family.name
        table.add_row("" if repeated else r.family.name, *where, *_figure_cells(r))
    return table


def _figure_cells(row: Row) -> tuple[str, ...]:
    f = row.figure
    if f is None:
        return "[dim]not measured[/]", "", "", ""
    if row.stale:
        return "[yellow]stale[/]", "", "", ""
    r, worst = f.result, f.worst_error()
    error = "" if worst is None else f"{worst[1]:.1e} / {worst[2]:.1e} [dim]{worst[0]}[/]"
    if r.ok:
        return "[green]ok[/]", f"{r.tflops:.1f}", f"{r.pct_of_roofline:.1f}", error
    return f"[red]{r.status.value}[/]", "-", "-", error


def _note(row: Row) -> str:
    """The line under a family's recipe that says why a figure is missing: stale, or how it failed."""
    f = row.figure
    if f is None or (f.result.ok and not row.stale):
        return ""
    if row.stale:
        return (f"[yellow]stale figure ({f.machine} {f.shape}, {_when(f)}): {escape(row.stale)}; re-measure: "
                f"{remeasure(f.task, f.machine, f.shape)}[/]")
    first = f.result.message.splitlines()[0] if f.result.message else "(no message)"
    return f"[red]{f.result.status.value}[/] ({f.result.stage} stage, {f.machine} {f.shape}): {escape(first)}"


def rows_json(rows: list[Row], figures_path: str) -> dict[str, Any]:
    """One JSON object: families in library order, each with its figures (stale ones without numbers)."""
    families: dict[str, dict[str, Any]] = {}
    for row in rows:
        fam = families.setdefault(row.family.name, {
            "family": row.family.name, "task": row.family.task, "summary": row.family.summary,
            "knobs": {k: list(v) for k, v in row.family.space.items()}, "figures": []})
        if row.figure is not None:
            fam["figures"].append(_figure_json(row.figure, row.stale))
    return {"figures_file": figures_path, "families": list(families.values())}


def _figure_json(f: LibraryFigure, stale: str) -> dict[str, Any]:
    when = datetime.fromtimestamp(f.measured_at, timezone.utc).isoformat(timespec="seconds")
    out: dict[str, Any] = {"machine": f.machine, "shape": f.shape, "measured_at": when, "seed": f.result.seed,
                           "source_hash": f.source_hash, "current": not stale, "stale_reason": stale or None}
    if stale:
        return out
    r, worst = f.result, f.worst_error()
    return {**out, "status": r.status.value, "tflops": round(r.tflops, 3) if r.ok else None,
            "pct_of_roofline": round(r.pct_of_roofline, 2) if r.ok else None,
            "time_ns": r.time_ns if r.ok else None,
            "worst_error": None if worst is None else {"distribution": worst[0], "error": worst[1], "budget": worst[2]},
            "message": r.message.splitlines()[0] if r.message else ""}

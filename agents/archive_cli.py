"""`cubepilot archive ...`: read the recorded runs (ls, show, lineage, export)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from strategies.archive import Archive

archive_app = typer.Typer(help="Look at recorded runs: ls, show, lineage, export.", no_args_is_help=True)
console = Console()
ARCHIVE_OPTION = typer.Option(Path(".cubepilot") / "archive.sqlite", "--archive", help="archive SQLite file")


def _open(path: Path) -> Archive:
    if not path.exists():
        Console(stderr=True).print(f"[bold red]error:[/] no archive at {path} (start one with `cubepilot run`, "
                                   "or point --archive at the file)")
        raise typer.Exit(2)
    return Archive(path)


def _run_rows(store: Archive, run_id: str):
    try:
        store.run_config(run_id)
    except KeyError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.args[0]}")
        raise typer.Exit(2)
    return store.evaluations(run_id)


@archive_app.command("ls")
def ls(archive: Path = ARCHIVE_OPTION) -> None:
    """List runs, newest first."""
    store = _open(archive)
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("run", "started", "task", "machine", "shape", "status", "evals", "best TFLOP/s"):
        table.add_column(col, no_wrap=col == "run")
    for r in store.runs():
        best = "-" if r["best_tflops"] is None else f"{r['best_tflops']:.1f}"
        table.add_row(r["id"], time.strftime("%m-%d %H:%M", time.localtime(r["created"])), r["task"], r["machine"],
                      r["shape"], r["status"], str(r["evaluations"]), best)
    console.print(table)


@archive_app.command("show")
def show(run_id: str, archive: Path = ARCHIVE_OPTION, top: int = typer.Option(10, help="rows to show"),
         kernel: bool = typer.Option(False, "--kernel", help="print the best kernel's source too")) -> None:
    """The best kernels of a run, with strategy, figures and status counts."""
    store = _open(archive)
    rows = _run_rows(store, run_id)
    config = store.run_config(run_id)
    ok = sorted((r for r in rows if r.result.ok), key=lambda r: r.result.time_ns)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.result.status.value] = statuses.get(r.result.status.value, 0) + 1
    console.print(f"run [bold]{run_id}[/]: {config.task} on {config.machine} at {config.shape}, seed {config.seed}, "
                  f"{len(rows)}/{config.budget} evaluations; " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("#", "strategy", "origin", "TFLOP/s", "% roofline", "bottleneck", "knobs"):
        table.add_column(col)
    for r in ok[:top]:
        knobs = " ".join(f"{k}={v}" for k, v in sorted(r.strategy.knobs.items()))
        table.add_row(str(r.seq), f"{r.strategy.family} {r.strategy.id}", r.strategy.origin, f"{r.result.tflops:.1f}",
                      f"{r.result.pct_of_roofline:.1f}", r.result.bottleneck, knobs)
    console.print(table)
    if ok:
        best = ok[0]
        console.print(f"best: {best.strategy.plan}\n{best.result.roofline}", highlight=False)
        if kernel:
            console.print(store.source(best.kernel_hash), highlight=False, markup=False)


@archive_app.command("lineage")
def lineage(run_id: str, strategy_id: str = typer.Argument(None, help="default: the run's best"),
            archive: Path = ARCHIVE_OPTION) -> None:
    """Walk a strategy's parents back to the library strategies it came from."""
    store = _open(archive)
    rows = _run_rows(store, run_id)
    by_id = {r.strategy.id: r for r in rows}
    ok = sorted((r for r in rows if r.result.ok), key=lambda r: r.result.time_ns)
    current = strategy_id or (ok[0].strategy.id if ok else None)
    depth, seen = 0, set()
    frontier = [current] if current else []
    while frontier:
        sid = frontier.pop(0)
        if sid in seen or sid not in by_id:
            continue
        seen.add(sid)
        r = by_id[sid]
        figure = f"{r.result.tflops:.1f} TFLOP/s" if r.result.ok else r.result.status.value
        console.print(f"{'  ' * depth}{sid} [{r.strategy.origin}] {r.strategy.describe()}: {figure}", highlight=False)
        frontier.extend(r.strategy.parents)
        depth += 1


@archive_app.command("export")
def export(run_id: str, directory: Path, archive: Path = ARCHIVE_OPTION,
           top: int = typer.Option(5, help="how many of the best kernels")) -> None:
    """Write the best kernels as plain .py files with a JSON of their figures."""
    store = _open(archive)
    rows = sorted((r for r in _run_rows(store, run_id) if r.result.ok), key=lambda r: r.result.time_ns)[:top]
    directory.mkdir(parents=True, exist_ok=True)
    for rank, r in enumerate(rows, 1):
        stem = f"{rank:02d}_{r.strategy.family}_{r.strategy.id}"
        (directory / f"{stem}.py").write_text(store.source(r.kernel_hash))
        (directory / f"{stem}.json").write_text(json.dumps({"strategy": r.strategy.model_dump(mode="json"),
                                                            "result": r.result.model_dump(mode="json")}, indent=2))
    console.print(f"wrote {len(rows)} kernels to {directory}")

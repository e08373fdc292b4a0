"""`cubepilot archive ...`: read the recorded runs (ls, show, calls, lineage, export, diff, leaderboard)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from strategies.archive import Archive

archive_app = typer.Typer(help="Look at recorded runs: ls, show, calls, lineage, export, diff, leaderboard.",
                          no_args_is_help=True)
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
         kernel: bool = typer.Option(False, "--kernel", help="print the best kernel's source too"),
         calls: bool = typer.Option(False, "--calls", help="list every model call too (prompts and answers: "
                                    "`cubepilot archive calls RUN`)")) -> None:
    """The best kernels of a run: strategy, who wrote each kernel (role, model, how), figures,
    status counts, model spend and the strategies' predicted against measured speed-ups."""
    store = _open(archive)
    rows = _run_rows(store, run_id)
    config = store.run_config(run_id)
    origins = store.origins(run_id)
    ok = sorted((r for r in rows if r.result.ok), key=lambda r: r.result.time_ns)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r.result.status.value] = statuses.get(r.result.status.value, 0) + 1
    console.print(f"run [bold]{run_id}[/]: {config.task} on {config.machine} at {config.shape}, seed {config.seed}, "
                  f"{len(rows)}/{config.budget} evaluations; " + ", ".join(f"{k} {v}" for k, v in statuses.items()))
    spend = store.spend(run_id)
    if spend["calls"]:
        console.print(f"model calls: {spend['calls']}, {spend['tokens_in']:,} tokens in, {spend['tokens_out']:,} out, "
                      f"${spend['cost_usd']:.4f}; " + "; ".join(
                          f"{b['role']} {escape(b['model'])}: {b['calls']} calls ${b['cost_usd']:.4f}" for b in spend["by"]),
                      highlight=False)
    table = Table(box=box.SIMPLE_HEAD)
    for col in ("#", "strategy", "origin", "written by", "TFLOP/s", "% roofline", "bottleneck", "knobs / techniques"):
        table.add_column(col)
    for r in ok[:top]:
        table.add_row(f"{r.seq}" + (f".{r.attempt}" if r.attempt else ""), f"{r.strategy.family} {r.strategy.id}",
                      r.strategy.origin, escape(_written_by(r.strategy, origins.get((r.seq, r.attempt)))),
                      f"{r.result.tflops:.1f}", f"{r.result.pct_of_roofline:.1f}", r.result.bottleneck,
                      escape(_knobs_or_techniques(r.strategy)))
    console.print(table)
    _print_predictions(store, run_id, rows)
    if ok:
        best = ok[0]
        console.print(f"best: {best.strategy.plan}\n{best.result.roofline}", highlight=False, markup=False)
        if kernel:
            console.print(store.source(best.kernel_hash), highlight=False, markup=False)
    if calls:
        _print_calls(store, run_id, full=False)


def _written_by(strategy, origin) -> str:
    """strategy author -> kernel author (role, how): the lineage of a kernel to who made it."""
    planner = strategy.author.split(":", 1)[-1] if strategy.author != "builtin" else "builtin"
    if origin is None:
        return planner
    if planner == origin.author == "builtin":
        return "builtin" + (" fixer" if origin.role == "fixer" else "")
    return f"{planner} -> {origin.role} {origin.author} ({origin.mode})"


def _knobs_or_techniques(strategy) -> str:
    if strategy.techniques:
        return "; ".join(strategy.techniques)
    return " ".join(f"{k}={v}" for k, v in sorted(strategy.knobs.items()))


def _print_predictions(store: Archive, run_id: str, rows) -> None:
    predictions = store.predictions(run_id)
    if not predictions:
        return
    plans = {r.strategy.id: r.strategy for r in rows}
    table = Table(title="Predicted vs measured speed-up over the first parent", box=box.SIMPLE_HEAD)
    for col in ("#", "strategy", "attacks", "predicted", "measured", "plan"):
        table.add_column(col)
    for p in predictions[-12:]:
        measured = "failed" if p.measured is None else f"{p.measured:.2f}x"
        plan = plans[p.strategy_id].plan if p.strategy_id in plans else ""
        table.add_row(f"{p.seq}" + (f".{p.attempt}" if p.attempt else ""), p.strategy_id, escape(p.bottleneck),
                      f"{p.predicted:.2f}x", measured, escape(plan[:70]))
    console.print(table)


def _print_calls(store: Archive, run_id: str, full: bool, seq: int | None = None) -> None:
    from agents.llm.records import CallRecord

    table = Table(title=f"Model calls of run {run_id}", box=box.SIMPLE_HEAD)
    for col in ("n", "step", "role", "model", "tokens in/out", "$", "s", "result"):
        table.add_column(col)
    for c in store.calls(run_id, seq):
        table.add_row(str(c.n), f"{c.seq}.{c.attempt}", c.role, escape(c.model), f"{c.tokens_in}/{c.tokens_out}",
                      f"{c.cost_usd:.5f}", f"{c.latency_s:.1f}", escape(c.error or "ok"))
    console.print(table)
    if not full:
        return
    for c in store.calls(run_id, seq):
        record = CallRecord.from_json(c.record)
        console.rule(f"call {c.n}: step {c.seq}.{c.attempt}, {c.role}, {c.model}")
        for message in record.messages:
            console.print(f"[bold]{message.get('role')}[/]:", highlight=False)
            console.print(str(message.get("content", "")), highlight=False, markup=False)
        console.print("[bold]answer[/]:" if record.ok else f"[bold red]failed[/]: {escape(record.error)}", highlight=False)
        console.print(record.response, highlight=False, markup=False)


@archive_app.command("calls")
def calls_cmd(run_id: str, archive: Path = ARCHIVE_OPTION,
              step: int = typer.Option(None, "--step", help="only the calls made for this step (seq)"),
              full: bool = typer.Option(False, "--full", help="print every prompt and answer in full")) -> None:
    """A run's model calls: role, model, tokens, cost, latency and outcome; --full adds the prompts and answers."""
    store = _open(archive)
    _run_rows(store, run_id)
    _print_calls(store, run_id, full, step)


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


def _strategy_ref(store: Archive, ref: str, run_id: str | None):
    """A strategy given as ID or RUN:ID -> (run id, strategy, result, kernel hash)."""
    if ":" in ref:
        run_id, ref = ref.rsplit(":", 1)
    try:
        return store.find_strategy(ref, run_id)
    except KeyError as exc:
        Console(stderr=True).print(f"[bold red]error:[/] {exc.args[0]}", highlight=False)
        raise typer.Exit(2)


def _figure(result) -> str:
    if result is None:
        return "never evaluated"
    return f"{result.tflops:.2f} TFLOP/s, {result.bottleneck}" if result.ok else result.status.value


@archive_app.command("diff")
def diff(a: str = typer.Argument(..., help="strategy id (or RUN:ID) of the old side"),
         b: str = typer.Argument(..., help="strategy id (or RUN:ID) of the new side"),
         run: str = typer.Option(None, "--run", help="look both ids up in this run (default: newest run holding each)"),
         archive: Path = ARCHIVE_OPTION) -> None:
    """Compare two strategies: family, plan, technique tags and knobs, then their kernels' source."""
    import difflib

    from rich.syntax import Syntax

    store = _open(archive)
    (run_a, sa, ra, ha), (run_b, sb, rb, hb) = _strategy_ref(store, a, run), _strategy_ref(store, b, run)
    for s, run_s, r in ((sa, run_a, ra), (sb, run_b, rb)):
        console.print(f"[bold]{s.id}[/] (run {run_s}) {s.family} {escape(f'[{s.origin}]')}: {_figure(r)}",
                      highlight=False)
    if ra is not None and rb is not None and ra.ok and rb.ok and rb.time_ns:
        console.print(f"{sb.id} is {ra.time_ns / rb.time_ns:.2f}x the speed of {sa.id}", highlight=False)
    table = Table(box=box.SIMPLE_HEAD, title="Strategy")
    for col in ("field", sa.id, sb.id):
        table.add_column(col)
    rows = [("family", sa.family, sb.family), ("origin", sa.origin, sb.origin),
            ("parents", " ".join(sa.parents) or "-", " ".join(sb.parents) or "-")]
    for name, x, y in ((f"tag {k}", sa.tags.get(k), sb.tags.get(k)) for k in sorted(set(sa.tags) | set(sb.tags))):
        rows.append((name, str(x if x is not None else "-"), str(y if y is not None else "-")))
    for k in sorted(set(sa.knobs) | set(sb.knobs)):
        rows.append((f"knob {k}", str(sa.knobs.get(k, "-")), str(sb.knobs.get(k, "-"))))
    for name, x, y in rows:
        style = "bold yellow" if x != y else None
        table.add_row(name, x, y, style=style)
    console.print(table)
    if sa.plan != sb.plan:
        console.print(f"plan {sa.id}: {sa.plan}\nplan {sb.id}: {sb.plan}", highlight=False)
    if ha is None or hb is None:
        console.print("no source diff: one of them was never evaluated, so no kernel is recorded")
        return
    text = "".join(difflib.unified_diff(store.source(ha).splitlines(True), store.source(hb).splitlines(True),
                                        f"{sa.id}.py", f"{sb.id}.py"))
    console.print(Syntax(text, "diff", theme="ansi_dark", background_color="default") if text else "identical source")


@archive_app.command("leaderboard")
def leaderboard(task: str = typer.Option(None, "--task", "-t", help="only runs of this task"),
                machine: str = typer.Option(None, "--machine", "-m", help="only runs on this machine"),
                archive: Path = ARCHIVE_OPTION,
                as_json: bool = typer.Option(False, "--json", help="print one JSON object")) -> None:
    """Rank runs by their fastest ok kernel, within each task, machine and shape."""
    store = _open(archive)
    rows = store.best_per_run(task, machine)
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["machine"], r["shape"]), []).append(r)
    if as_json:
        print(json.dumps({"groups": [{"task": t, "machine": m, "shape": s,
                                      "runs": [{k: v for k, v in r.items() if k != "config"} for r in g]}
                                     for (t, m, s), g in sorted(groups.items())]}))
        return
    if not groups:
        console.print("no run" + (f" of task {task}" if task else "") + (f" on {machine}" if machine else "")
                      + " has an ok kernel yet")
        return
    for (t, m, s), group in sorted(groups.items()):
        table = Table(box=box.SIMPLE_HEAD, title=f"{t} on {m} at {s}")
        for col in ("#", "run", "backend/mode/seed", "evals", "TFLOP/s", "% roof", "best strategy"):
            table.add_column(col, no_wrap=True, justify="right" if col in ("#", "evals", "TFLOP/s", "% roof") else "left")
        for rank, r in enumerate(sorted(group, key=lambda r: r["time_ns"]), 1):
            config = json.loads(r["config"])
            table.add_row(str(rank), r["id"], f"{r['backend']}/{config.get('mode', '-')}/{config.get('seed', '-')}",
                          str(r["evaluations"]), f"{r['tflops']:.2f}", f"{r['pct_roofline']:.1f}", r["strategy_id"])
        console.print(table)

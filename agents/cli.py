"""The `cubepilot` command line: one typer app, one sub-command per user task.

Errors a user can fix (unknown machine, bad file) print one paragraph and exit 2;
nothing here prints a traceback for bad input.
"""
from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich import box
from rich.table import Table

from hwmodel.errors import HwError
from hwmodel.spec import MachineSpec, load_machine, preset_names

app = typer.Typer(help="cubepilot: strategy-coordinated agents evolving GEMM and attention kernels "
                       "for a simulated Ascend-like NPU.", no_args_is_help=True, add_completion=False)
machines_app = typer.Typer(help="List the machine presets, or show one with its peaks and ridge points.",
                           invoke_without_command=True)
app.add_typer(machines_app, name="machines")
console = Console()


def _register_archive() -> None:
    from agents.archive_cli import archive_app
    app.add_typer(archive_app, name="archive")


def fail(message: str) -> None:
    """Print an actionable error and exit with status 2."""
    from rich.markup import escape

    Console(stderr=True).print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(2)


def _machine(name: str) -> MachineSpec:
    try:
        return load_machine(name)
    except HwError as exc:
        fail(str(exc))


@machines_app.callback()
def machines(ctx: typer.Context) -> None:
    """List the machine presets (pass a preset name or a TOML path to `show`)."""
    if ctx.invoked_subcommand is not None:
        return
    table = Table(title="Machine presets (cubepilot machines show NAME)", box=box.SIMPLE_HEAD)
    for col in ("name", "cores", "GHz", "FP16 TF/s", "FP32 split", "INT8 TOPS", "HBM GB/s", "L2 MiB"):
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=col == "name",
                         min_width=12 if col == "name" else None)
    for name in preset_names():
        m = load_machine(name)
        table.add_row(name, str(m.num_cores), f"{m.clock_ghz:.2f}", f"{m.peak_tflops('fp16'):.1f}",
                      f"{m.peak_tflops('fp16') / 3:.1f}",
                      f"{m.peak_tflops('int8'):.0f}" if "int8" in m.cube.modes else "-",
                      f"{m.gm.hbm_gbps:.0f}", f"{m.gm.l2_bytes / 2**20:.0f}")
    console.print(table)


@machines_app.command("show")
def machines_show(name: str = typer.Argument(..., help="preset name (see `cubepilot machines`) or path to a TOML file")) -> None:
    """Show one machine: engines with peaks and ridge points, memories, data paths."""
    from hwmodel.roofline import ENGINES, engine_peak_tflops

    m = _machine(name)
    console.print(f"[bold]{m.name}[/]: {m.description}")
    console.print(f"{m.num_cores} cores at {m.clock_ghz:.3f} GHz; pipes {', '.join(m.pipes)}; "
                  f"issue {m.issue_cycles} cycles/op; barrier {m.barrier_cycles} cycles")
    engines = Table(title="Engines (ridge = peak / HBM bandwidth)")
    for col in ("engine", "peak TFLOP/s", "ridge FLOP/B", "per core per cycle"):
        engines.add_column(col, justify="left" if col == "engine" else "right")
    for engine in ENGINES:
        try:
            peak = engine_peak_tflops(m, engine)
        except ValueError:
            continue
        if engine in m.cube.modes:
            mode = m.cube.modes[engine]
            per = f"{mode.m}x{mode.n}x{mode.k} MAC -> {mode.acc_dtype}"
        elif engine == "fp32_split":
            per = "3 FP16 products per FP32 product"
        else:
            per = f"{m.vector.bytes_per_cycle} B datapath"
        engines.add_row(engine, f"{peak:.1f}", f"{peak * 1e3 / m.gm.hbm_gbps:.0f}", per)
    console.print(engines)
    mems = Table(title="Per-core memories")
    for col in ("memory", "capacity", "alignment"):
        mems.add_column(col, justify="left" if col == "memory" else "right")
    for mem_name, mem in m.memories.items():
        frac = f" x {mem.fractal_rows} rows" if mem.fractal_rows > 1 else ""
        mems.add_row(mem_name, f"{mem.capacity_bytes / 1024:.0f} KiB", f"{mem.alignment_bytes} B{frac}")
    mems.add_row("GM", f"{m.gm.capacity_bytes / 2**30:.0f} GiB",
                 f"L2 {m.gm.l2_bytes / 2**20:.0f} MiB, HBM {m.gm.hbm_gbps:.0f} GB/s, L2 {m.gm.l2_gbps:.0f} GB/s")
    console.print(mems)
    paths = Table(title="Data paths (per core)")
    for col in ("path", "pipe", "B/cycle", "GB/s", "latency cyc", "setup cyc"):
        paths.add_column(col, justify="left" if col in ("path", "pipe") else "right")
    for p in m.paths:
        paths.add_row(f"{p.src} -> {p.dst}", p.pipe, f"{p.bytes_per_cycle:g}", f"{p.bytes_per_cycle * m.clock_ghz:.0f}",
                      str(p.latency_cycles), str(p.setup_cycles))
    console.print(paths)
    console.print(f"Cube accumulation: {m.cube.accumulation} every {m.cube.accumulation_group_k} products; "
                  f"GM: {m.gm.core_hbm_bytes_per_cycle:g} B/cycle per core on an L2 miss, "
                  f"{m.gm.core_l2_bytes_per_cycle:g} on a hit; latency {m.gm.hbm_latency_cycles}/{m.gm.l2_latency_cycles} cycles.")
    if m.notes:
        console.print(f"Notes: {m.notes}")


@app.command("tasks")
def tasks() -> None:
    """List the tasks a kernel can be evaluated on."""
    from evaluator.tasks import TASKS

    console.print("[bold]Tasks[/] (cubepilot eval FILE --task NAME)\n")
    for t in TASKS.values():
        console.print(f"[bold]{t.name}[/]  kernel(k, {', '.join(t.arg_names)})  engine {t.engine}  "
                      f"benchmark {'x'.join(t.shape_names)} = {t.format_shape(t.bench_shape)}", highlight=False)
        console.print(f"    {t.description}.\n    distributions: {', '.join(t.distributions)}; small shapes: "
                      f"{', '.join(t.format_shape(s) for s in t.small_shapes)}\n", highlight=False)


@app.command("eval")
def eval_kernel(
    file: Path = typer.Argument(..., help="kernel source file defining kernel(k, ...)"),
    task: str = typer.Option("sgemm", "--task", "-t", help="task name (see `cubepilot tasks`)"),
    machine: str = typer.Option("ascend-910a", "--machine", "-m", help="preset name or TOML path"),
    shape: str = typer.Option(None, "--shape", "-s", help="benchmark shape, e.g. 4096x4096x4096 (default: the task's)"),
    seed: int = typer.Option(None, "--seed", help="seed for the test inputs (default: fresh each run)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the report"),
) -> None:
    """Evaluate one kernel: policy, sandbox, correctness on every distribution, timing.

    Exits 0 only when the kernel is ok and 1 when it fails.

    Exits 2 for bad input: missing file, unknown task or machine, bad shape, syntax error, no kernel() with the task's signature."""
    from evaluator.cascade import EvalConfig, evaluate
    from evaluator.errors import EvalError
    from evaluator.tasks import get_task

    if not file.is_file():
        fail(f"kernel file {str(file)!r} does not exist (give the path of a .py file defining kernel(k, ...))")
    try:
        source = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {str(file)!r}: {exc}")
    try:
        the_task = get_task(task)
        the_shape = the_task.parse_shape(shape) if shape else None
    except EvalError as exc:
        fail(str(exc))
    spec = _machine(machine)
    with console.status(f"evaluating {file.name} on {task} / {spec.name} ...", spinner="dots"):
        result = evaluate(source, the_task, spec, the_shape, EvalConfig(seed=seed))
    if as_json:
        print(result.model_dump_json())
    else:
        from agents.report_text import print_eval_result
        print_eval_result(console, result, file.name)
    if result.status.value == "compile_error":   # bad input: syntax error, missing or mis-typed kernel()
        raise typer.Exit(2)
    raise typer.Exit(0 if result.ok else 1)


@app.command("strategies")
def strategies(
    task: str = typer.Option(None, "--task", "-t", help="only this task's families (see `cubepilot tasks`)"),
    measure: bool = typer.Option(False, "--measure", help="evaluate each family's reference kernel through the full "
                                 "cascade now, record its figures in the figures file, and print them"),
    machine: str = typer.Option(None, "--machine", "-m", help="with --measure: preset name or TOML path to measure on "
                                "(default ascend-910a); without: show only figures measured on this machine"),
    shape: str = typer.Option(None, "--shape", "-s", help="needs --task. With --measure: the shape to measure at "
                              "(default: the task's benchmark shape with every side capped at 512, i.e. 512x512x512 "
                              "for GEMM tasks, 1x8x512x128 for attention); without: show only figures at this shape"),
    seed: int = typer.Option(None, "--seed", help="with --measure: seed of the correctness inputs (default: fresh)"),
    figures: Path = typer.Option(None, "--figures", help="JSON file of measured figures, read by the listing and "
                                 "rewritten atomically by --measure (default .cubepilot/library-figures.json)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of the tables"),
) -> None:
    """List the seed library: each technique family's task, recipe, knob space and measured figures.

    Figures come from the file that --measure writes; one of a kernel or machine changed since shows as stale.

    A reference kernel that fails on its task (some do by design, e.g. qgemm_int8 on qgemm) shows why.

    Exits 2 for bad input (unknown task or machine, bad shape); --measure exits 0 even when kernels fail."""
    from agents import strategies_cli
    from evaluator.errors import EvalError
    from evaluator.tasks import get_task
    from strategies.families import FAMILIES
    from strategies.figures import DEFAULT_FIGURES, FigureStore, FiguresError, quick_shape

    if seed is not None and not measure:
        fail("--seed only applies with --measure (it seeds the correctness inputs of the measurement)")
    if shape and not task:
        fail(f"--shape {shape} needs --task: GEMM tasks take MxNxK shapes and attention tasks BxHxSxD "
             "(e.g. --task hgemm --shape 1024x1024x1024)")
    try:
        the_task = get_task(task) if task else None
        the_shape = the_task.parse_shape(shape) if shape else None
    except EvalError as exc:
        fail(str(exc))
    spec = _machine(machine or "ascend-910a") if measure or machine else None
    shown = None if measure else (spec and spec.name, the_task.format_shape(the_shape) if the_shape else None)
    families = [f for f in FAMILIES.values() if (not task or f.task == task) and f.path.exists()]
    store = FigureStore(figures or DEFAULT_FIGURES)
    try:
        if measure:
            shapes = {f.task: the_shape or quick_shape(get_task(f.task)) for f in families}
            rows = strategies_cli.measure_all(families, spec, shapes, store, seed, console, quiet=as_json)
        else:
            rows = strategies_cli.listing(families, store, *shown)
    except FiguresError as exc:
        fail(str(exc))
    if as_json:
        print(__import__("json").dumps(strategies_cli.rows_json(rows, str(store.path))))
    else:
        strategies_cli.print_rows(console, rows, str(store.path), measure, *(shown or (None, None)))
    if len(rows) < len(families):                   # Ctrl-C during --measure: what was recorded is kept
        raise typer.Exit(130)


@app.command("run")
def run(
    task: str = typer.Option(None, "--task", "-t", help="task to evolve kernels for (see `cubepilot tasks`; default sgemm)"),
    machine: str = typer.Option(None, "--machine", "-m", help="preset name or TOML path (default ascend-910a)"),
    budget: int = typer.Option(None, "--budget", "-n", min=1, help="evaluations to spend, fixes included (default 24)"),
    seed: int = typer.Option(None, "--seed", help="seed of every decision and test input (same seed, same run; default 0)"),
    backend: str = typer.Option(None, "--backend", help="builtin (offline, no model; the default) or openai (any "
                                "OpenAI-compatible server: OpenAI, vLLM, Ollama, llama.cpp)"),
    model: str = typer.Option(None, "--model", help="served model id (sets [models.default].model)"),
    base_url: str = typer.Option(None, "--base-url", help="server URL, e.g. http://127.0.0.1:8080/v1"),
    api_key_env: str = typer.Option(None, "--api-key-env", help="environment variable holding the API key "
                                    "(default OPENAI_API_KEY; the key itself is never written anywhere)"),
    no_api_key: bool = typer.Option(False, "--no-api-key", help="the server takes no key (local servers)"),
    price_in: float = typer.Option(None, "--price-in", help="USD per million prompt tokens"),
    price_out: float = typer.Option(None, "--price-out", help="USD per million completion tokens"),
    allow_unpriced: bool = typer.Option(None, "--allow-unpriced", help="run models without prices (cost shows 0)"),
    context_tokens: int = typer.Option(None, "--context-tokens", help="the model's context window, in tokens"),
    max_dollars: float = typer.Option(None, "--max-dollars", help="stop when the model calls cost this much"),
    max_tokens_total: int = typer.Option(None, "--max-tokens-total", help="stop after this many model tokens"),
    max_wall: float = typer.Option(None, "--max-wall", help="stop after this many seconds of model calls' run"),
    fix_attempts: int = typer.Option(None, "--fix-attempts", min=0, max=5, help="fixes tried per failed step (default 1)"),
    no_strategy: bool = typer.Option(None, "--no-strategy", help="comparison: code-only evolution, no strategist"),
    no_roofline: bool = typer.Option(None, "--no-roofline", help="comparison: prompts without the bottleneck card"),
    best_of_n: bool = typer.Option(None, "--best-of-n", help="comparison: independent samples, no evolution"),
    mode: str = typer.Option(None, "--mode", help="builtin ablations: strategy (default) | mutation-only | random"),
    shape: str = typer.Option(None, "--shape", "-s", help="benchmark shape (default: the task's)"),
    workers: int = typer.Option(None, "--workers", "-w", min=1,
                                help="evaluations side by side, one process each (default 1; a run keeps its "
                                     "value on resume unless given)"),
    config_file: Path = typer.Option(None, "--config", help="configuration file (default ./cubepilot.toml if it "
                                     "exists; `cubepilot init` writes one)"),
    resume: str = typer.Option(None, "--resume", help="continue the run with this id, where it stopped"),
    replay: str = typer.Option(None, "--replay", help="re-run a recorded LLM run offline: every model answer comes "
                               "from that run's record, no server is contacted"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print what the run would send and estimate its cost; "
                                 "evaluate nothing, call no model"),
    archive: Path = typer.Option(None, "--archive", help="archive SQLite file (default .cubepilot/archive.sqlite)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON summary object"),
) -> None:
    """Evolve kernels for a task on a machine. Ctrl-C stops cleanly; --resume continues.

    With --backend openai the strategist, coder and fixer are played by a model: every prompt,
    answer, token and dollar is recorded in the archive; the API key is read from the
    environment only. Exits 0 when the run ends (budget of evaluations, tokens, dollars or
    time spent), 130 when stopped by Ctrl-C, 3 when the model provider is down (resume later),
    2 for bad input."""
    from agents import config as cfg
    from agents import run_cli

    flags = dict(task=task, machine=machine, budget=budget, seed=seed, shape=shape, workers=workers,
                 fix_attempts=fix_attempts, backend=backend, mode=mode, model=model, base_url=base_url,
                 api_key_env=api_key_env, no_api_key=no_api_key, price_in=price_in, price_out=price_out,
                 allow_unpriced=allow_unpriced, context_tokens=context_tokens,
                 budget_tokens=max_tokens_total, budget_dollars=max_dollars, budget_wall_s=max_wall, strategy=None if no_strategy is None else not no_strategy,
                 roofline=None if no_roofline is None else not no_roofline, best_of_n=best_of_n)
    try:
        settings = run_cli.settle_config(cfg.load(config_file), flags, archive, resume, replay)
    except (cfg.ConfigError, run_cli.RunInputError) as exc:
        fail(str(exc))
    spec = _machine(settings.run.machine)
    if dry_run:
        run_cli.dry_run(console, settings, spec, as_json)
        raise typer.Exit(0)
    try:
        store, run_id, config = run_cli.start_or_resume(settings, resume, replay, flags)
    except (KeyError, cfg.ConfigError, run_cli.RunInputError) as exc:
        fail(str(exc.args[0]))
    quiet = as_json
    if not quiet:
        who = "builtin roles" if config.backend == "builtin" else \
            "models " + ", ".join(sorted({m["model"] for m in config.agents.get("models", {}).values()}))
        console.print(f"run [bold]{run_id}[/]: {config.task} on {config.machine} at {config.shape}, budget "
                      f"{config.budget}, seed {config.seed}, {who}"
                      f"{f', {config.workers} workers' if config.workers > 1 else ''}"
                      f"{f', replaying {replay}' if replay else ''}, archive {store.path}", highlight=False)
    outcome = run_cli.run_to_end(store, run_id, config, spec, console, quiet, replay)
    result = run_cli.summary_dict(outcome.summary, store)
    result.update(stopped_by=outcome.reason, spend=store.spend(run_id))
    if as_json:
        print(__import__("json").dumps(result))
    else:
        run_cli.print_summary(console, result, outcome)
    store.close()
    if outcome.error:
        from rich.markup import escape
        Console(stderr=True).print(f"[bold red]error:[/] {escape(outcome.error)}", highlight=False)
    raise typer.Exit(outcome.exit_code)


@app.command("init")
def init(
    path: Path = typer.Argument(Path("cubepilot.toml"), help="where to write the configuration"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing file"),
) -> None:
    """Write a commented cubepilot.toml: the run, the backend, models (OpenAI or a local server), roles, budgets."""
    from agents.config import TEMPLATE

    if path.exists() and not force:
        fail(f"{path} exists; pass --force to overwrite it")
    path.write_text(TEMPLATE)
    console.print(f"wrote {path}; edit it, then: cubepilot run  (flags override the file; see cubepilot run --help)",
                  highlight=False)


@app.command("serve")
def serve(
    archive: Path = typer.Option(Path(".cubepilot") / "archive.sqlite", "--archive", help="archive SQLite file"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind; any but loopback requires a token"),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="TCP port"),
    token: str = typer.Option(None, "--token", help="access token every request must carry (default: none on "
                              "loopback; generated and printed with the URL on any other host)"),
) -> None:
    """Browse the archive in a web browser: runs, charts, kernels, lineage, leaderboard (read-only)."""
    from agents.viewer.app import serve as serve_viewer

    if token is not None and len(token) < 16:
        fail("--token must be at least 16 characters (omit it to have one generated)")
    try:
        serve_viewer(archive, host, port, token, say=lambda text: console.print(text, highlight=False, soft_wrap=True))
    except OSError as exc:
        fail(f"cannot serve on {host}:{port}: {exc}")


@app.command("report")
def report(
    run_id: str = typer.Argument(..., help="the run to report on (see `cubepilot archive ls`)"),
    out: Path = typer.Option(..., "--out", help="directory for the PNG charts and summary.md"),
    archive: Path = typer.Option(Path(".cubepilot") / "archive.sqlite", "--archive", help="archive SQLite file"),
) -> None:
    """Write a run's charts as PNG (convergence, error vs time, roofline, families) and a Markdown summary."""
    from agents.report import ReportError, write_report

    try:
        written = write_report(archive, run_id, out)
    except ReportError as exc:
        fail(str(exc))
    console.print(f"wrote {', '.join(p.name for p in written)} to {out}", highlight=False)


_register_archive()


def main() -> None:
    app()


if __name__ == "__main__":
    main()

"""Terminal rendering of evaluation results (used by `cubepilot eval` and run summaries)."""
from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table

from evaluator.result import EvalResult


def _bar(fraction: float, width: int = 30) -> str:
    filled = int(round(max(0.0, min(1.0, fraction)) * width))
    return "#" * filled + "." * (width - filled)


def print_eval_result(console: Console, r: EvalResult, name: str) -> None:
    colour = "green" if r.ok else "red"
    console.print(f"[bold]{name}[/] on [bold]{r.task}[/] / {r.machine} at {r.shape}: "
                  f"[bold {colour}]{r.status.value}[/] ({r.eval_seconds:.1f} s, seed {r.seed})")
    if not r.ok:
        where = f"line {r.line}: " if r.line else ""
        console.print(f"  stage {r.stage}: {where}{r.message}", highlight=False)
    if r.errors:
        errors = Table(box=box.SIMPLE_HEAD, title="Relative error vs FP64 (worst trial per distribution)")
        for col in ("distribution", "error", "budget", ""):
            errors.add_column(col, justify="left" if col == "distribution" else "right")
        for dist, err in r.errors.items():
            budget = r.budgets.get(dist, 0.0)
            errors.add_row(dist, f"{err:.3e}", f"{budget:.3e}", "ok" if err <= budget else "OVER")
        if r.bench_error is not None:
            errors.add_row(f"benchmark shape (sampled)", f"{r.bench_error:.3e}", "", "")
        console.print(errors)
    if r.ok:
        console.print(f"  time {r.time_ns / 1e3:,.1f} us   {r.tflops:,.2f} TFLOP/s   {r.pct_of_peak:.1f}% of peak   "
                      f"{r.pct_of_roofline:.1f}% of roofline   bottleneck {r.bottleneck}   L2 hits {r.l2_hit_rate:.0%}   "
                      f"{r.ops:,} ops", highlight=False)
        pipes = Table(box=box.SIMPLE_HEAD, title="Pipe busy (fraction of the kernel's time, mean over cores)")
        pipes.add_column("pipe")
        pipes.add_column("busy", justify="right")
        pipes.add_column("")
        for pipe, frac in sorted(r.pipe_busy.items(), key=lambda kv: -kv[1]):
            pipes.add_row(pipe, f"{frac:.0%}", _bar(frac))
        console.print(pipes)
        console.print(f"  {r.roofline}", highlight=False)

"""`cubepilot run`: start or resume an evolution run, with a progress bar and a summary."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.builtin import builtin_team
from agents.roles import Team
from agents.loop import Evaluate, RunSummary, evolve, summarize
from evaluator.cascade import EvalConfig
from evaluator.executor import EvalJob, WorkerCrashed, open_executor
from evaluator.result import EvalResult
from evaluator.tasks import get_task
from hwmodel.spec import MachineSpec
from strategies.archive import Archive, RunConfig

DEFAULT_ARCHIVE = Path(".cubepilot") / "archive.sqlite"


def start_or_resume(archive_path: Path, config: RunConfig | None, resume: str | None) -> tuple[Archive, str, RunConfig]:
    archive = Archive(archive_path)
    if resume:
        config = archive.run_config(resume)          # KeyError with the recent runs if unknown
        archive.set_status(resume, "running")
        return archive, resume, config
    return archive, archive.new_run(config), config


def execute(archive: Archive, run_id: str, config: RunConfig, machine: MachineSpec, console: Console,
            quiet: bool) -> RunSummary:
    task = get_task(config.task)
    team = builtin_team(config.mode, machine, task.parse_shape(config.shape), config.fix_attempts)
    with open_executor(config.workers, archive.path.parent / "cache") as executor:
        def run_batch(steps: list[tuple[str, int]]) -> Iterator[EvalResult]:
            return executor.map([step_job(config, machine, source, seq) for source, seq in steps])
        return _with_progress(archive, run_id, config, team, run_batch, console, quiet)


def step_job(config: RunConfig, machine: MachineSpec, source: str, seq: int) -> EvalJob:
    """The evaluation of step seq: its test inputs come from (run seed, seq), so its result
    does not depend on which worker evaluates it."""
    return EvalJob(source, config.task, machine, config.shape, EvalConfig(seed=config.seed * 100_003 + seq))


def _with_progress(archive: Archive, run_id: str, config: RunConfig, team: Team, run_batch: Evaluate,
                   console: Console, quiet: bool) -> RunSummary:
    done = len(archive.evaluations(run_id))
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("best {task.fields[best]}"), TextColumn("failures {task.fields[failures]}"),
               TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        tid = bar.add_task(f"{config.task} / {config.machine}", total=config.budget, completed=done,
                           best="-", failures=0)

        def progress(seq, strategy, result, elites, failures):
            best = elites.best()
            text = f"{best[1].tflops:.1f} TFLOP/s ({best[1].pct_of_roofline:.0f}% of roofline)" if best else "-"
            bar.update(tid, completed=seq + 1, best=text, failures=failures)

        return evolve(archive, run_id, config, team, run_batch, progress)


def summary_dict(s: RunSummary, archive: Archive) -> dict:
    best, base = s.best, s.baseline
    out = {"run_id": s.run_id, "archive": str(archive.path), "evaluations": s.evaluations, "failures": s.failures,
           "completed": s.completed, "best_tflops": None, "best_pct_of_roofline": None, "best_strategy": None,
           "baseline_tflops": None, "baseline_strategy": None, "speedup_vs_baseline": None}
    if best:
        out.update(best_tflops=round(best[1].tflops, 3), best_pct_of_roofline=round(best[1].pct_of_roofline, 2),
                   best_pct_of_peak=round(best[1].pct_of_peak, 2), best_strategy=best[0].id,
                   best_kernel=best[1].source_hash, best_plan=best[0].plan)
    if base:
        out.update(baseline_tflops=round(base[1].tflops, 3), baseline_strategy=base[0].id,
                   baseline_family=base[0].family)
    if best and base:
        out["speedup_vs_baseline"] = round(base[1].time_ns / best[1].time_ns, 3)
    return out


def print_summary(console: Console, d: dict, stopped: bool) -> None:
    if stopped:
        console.print(f"[yellow]Stopped[/] after {d['evaluations']} evaluations; nothing is lost. Resume with:\n"
                      f"  cubepilot run --resume {d['run_id']}" + archive_flag(d))
    if d["best_tflops"] is None:
        console.print(f"No correct kernel yet ({d['failures']} failures). Run id {d['run_id']}.")
        return
    speed = f"{d['speedup_vs_baseline']:.2f}x the best library strategy ({d['baseline_family']}, " \
            f"{d['baseline_tflops']:.1f} TFLOP/s)" if d["speedup_vs_baseline"] else "no library baseline passed"
    console.print(f"[bold green]Best kernel[/]: {d['best_tflops']:.1f} TFLOP/s = {d['best_pct_of_roofline']:.1f}% of "
                  f"the roofline limit, {speed}.\n  strategy {d['best_strategy']}: {d['best_plan']}\n"
                  f"  {d['evaluations']} evaluations, {d['failures']} failures; run {d['run_id']} in {d['archive']}\n"
                  f"  look at it: cubepilot archive show {d['run_id']}" + archive_flag(d)
                  + "\n  or browse the archive (charts, lineage, timelines): cubepilot serve" + archive_flag(d),
                  highlight=False)


def archive_flag(d: dict) -> str:
    return "" if Path(d["archive"]) == DEFAULT_ARCHIVE else f" --archive {d['archive']}"


def report_json(summary: RunSummary, archive: Archive) -> str:
    return json.dumps(summary_dict(summary, archive))


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop a run cleanly (the evaluation in flight is the most lost),
    also when the shell started it with SIGINT ignored (a background job)."""
    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


def interrupted_summary(archive: Archive, run_id: str, on_purpose: bool = True) -> RunSummary:
    """Mark the run stopped. Stopped on purpose (Ctrl-C, SIGTERM), the evaluations in flight were
    not the candidates' doing: forget them, so a resume evaluates them as new."""
    archive.set_status(run_id, "stopped")
    if on_purpose:
        archive.clear_pending(run_id)
    return summarize(archive, run_id)


__all__ = ["DEFAULT_ARCHIVE", "WorkerCrashed", "execute", "start_or_resume", "summary_dict", "print_summary",
           "typer"]

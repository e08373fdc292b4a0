"""`cubepilot run`: start or resume an evolution run, with a progress bar and a summary."""
from __future__ import annotations

import json
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
import sys
from pathlib import Path
from typing import Iterator

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.builtin import BuiltinBackend
from agents.loop import RunSummary, evolve, summarize
from evaluator.cascade import EvalCache, EvalConfig, evaluate
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


def execute(archive: Archive, run_id: str, config: RunConfig, machine, console: Console, quiet: bool) -> RunSummary:
    task = get_task(config.task)
    backend = BuiltinBackend(config.mode, machine, task.parse_shape(config.shape))
    with Evaluator(config, machine, archive.path.parent / "cache") as run_batch:
        return _with_progress(archive, run_id, config, backend, run_batch, console, quiet)


class WorkerCrashed(RuntimeError):
    """A worker process died mid-evaluation (killed, or out of memory)."""


class Evaluator:
    """Evaluates a batch of (source, seq) in order: in this process, or with workers > 1 in a
    pool of worker processes (each evaluation is CPU-bound Python and numpy). The test
    inputs of step seq come from (run seed, seq), so a result does not depend on the worker."""

    def __init__(self, config: RunConfig, machine: MachineSpec, cache_dir: Path):
        job = (config.task, machine, config.shape, config.seed, str(cache_dir))
        self.pool = None
        if config.workers > 1:
            self.pool = ProcessPoolExecutor(config.workers, multiprocessing.get_context("spawn"), _init_worker, job)
        else:
            _init_worker(*job, in_main=True)

    def __call__(self, jobs: list[tuple[str, int]]) -> Iterator[EvalResult]:
        if self.pool is None:
            yield from map(_evaluate_one, jobs)
            return
        try:
            yield from self.pool.map(_evaluate_one, jobs)
        except BrokenProcessPool:
            raise WorkerCrashed("a worker process died during an evaluation (killed, or out of memory); the "
                                "evaluations recorded so far are kept") from None

    def __enter__(self) -> "Evaluator":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool:   # stop workers mid-evaluation too (each then kills its sandbox, see _init_worker)
            self.pool.shutdown(wait=False, cancel_futures=True)
            for proc in multiprocessing.active_children():
                proc.terminate()
            for proc in multiprocessing.active_children():
                proc.join(timeout=10)


_WORKER: dict = {}


def _init_worker(task: str, machine: MachineSpec, shape: str, seed: int, cache_dir: str, in_main: bool = False) -> None:
    if not in_main:   # Ctrl-C is the main process's to handle; terminate() raises SystemExit here
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))
    the_task = get_task(task)
    _WORKER.update(task=the_task, machine=machine, shape=the_task.parse_shape(shape), seed=seed,
                   cache=EvalCache(cache_dir))


def _evaluate_one(job: tuple[str, int]) -> EvalResult:
    source, seq = job
    w = _WORKER
    return evaluate(source, w["task"], w["machine"], w["shape"], EvalConfig(seed=w["seed"] * 100_003 + seq), w["cache"])


def _with_progress(archive: Archive, run_id: str, config: RunConfig, backend: BuiltinBackend, run_batch: Evaluator,
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

        return evolve(archive, run_id, config, backend, run_batch, progress)


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
                  f"  look at it: cubepilot archive show {d['run_id']}" + archive_flag(d), highlight=False)


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


def interrupted_summary(archive: Archive, run_id: str) -> RunSummary:
    archive.set_status(run_id, "stopped")
    return summarize(archive, run_id)


__all__ = ["DEFAULT_ARCHIVE", "execute", "start_or_resume", "summary_dict", "print_summary", "typer"]

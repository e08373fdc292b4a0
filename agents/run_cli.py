"""`cubepilot run`: start or resume an evolution run, with a progress bar and a summary."""
from __future__ import annotations

import json
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from agents.config import Config, override, validate
from agents.loop import Evaluate, NoProgress, RunSummary, evolve, summarize
from agents.runstate import default_context
from agents.team import Crew, build_team
from evaluator.cascade import EvalConfig
from evaluator.errors import EvalError
from evaluator.executor import EvalJob, WorkerCrashed, open_executor
from evaluator.result import EvalResult
from evaluator.tasks import get_task
from hwmodel.spec import MachineSpec
from strategies.archive import Archive, RunConfig

DEFAULT_ARCHIVE = Path(".cubepilot") / "archive.sqlite"


class RunInputError(ValueError):
    """Bad input to `cubepilot run` that the user must fix (unknown task, bad shape, conflicting flags)."""


@dataclass(frozen=True)
class Outcome:
    summary: RunSummary
    reason: str                # why the run ended: "budget", "stopped", "tokens budget spent", ...
    exit_code: int = 0
    error: str = ""            # printed as an error (exit 2 or 3) after the summary


def settle_config(config: Config, flags: dict, archive: Path | None, resume: str | None, replay: str | None) -> Config:
    """The file's configuration with the flags on top, checked for a new run. A resumed or
    replayed run takes its recorded configuration instead (see start_or_resume)."""
    if resume and replay:
        raise RunInputError("--resume and --replay exclude each other: --replay starts a new run from a recorded one")
    config = override(config, **flags)
    if archive is not None:
        config = config.model_copy(update={"run": config.run.model_copy(update={"archive": str(archive)})})
    if not (resume or replay):
        try:
            task = get_task(config.run.task)
            if config.run.shape:
                task.parse_shape(config.run.shape)
        except EvalError as exc:
            raise RunInputError(str(exc)) from None
        config.check_llm()
    return config


def start_or_resume(config: Config, resume: str | None, replay: str | None,
                    flags: dict | None = None) -> tuple[Archive, str, RunConfig]:
    """Open the archive and start a run, or take a recorded run's configuration: on resume
    the flags may raise its budget of evaluations, its workers and its spend budgets."""
    archive = Archive(config.run.archive)
    flags = flags or {}
    if resume:
        run = archive.run_config(resume)          # KeyError with the recent runs if unknown
        run = run.model_copy(update={k: flags[k] for k in ("budget", "workers") if flags.get(k) is not None})
        spend = {k: flags[f"budget_{k}"] for k in ("tokens", "dollars", "wall_s") if flags.get(f"budget_{k}") is not None}
        if spend and run.agents:
            run = run.model_copy(update={"agents": {**run.agents, "budget": {**run.agents.get("budget", {}), **spend}}})
        archive.set_status(resume, "running")
        return archive, resume, run
    if replay:
        recorded = archive.run_config(replay)
        if recorded.backend == "builtin":
            raise RunInputError(f"run {replay} used the builtin backend: it made no model calls to replay "
                                "(a builtin run is reproduced by its seed: cubepilot run --seed ...)")
        return archive, archive.new_run(recorded), recorded
    task = get_task(config.run.task)
    shape = task.parse_shape(config.run.shape) if config.run.shape else task.bench_shape
    run = RunConfig(task=task.name, machine=config.run.machine, shape=task.format_shape(shape), budget=config.run.budget,
                    seed=config.run.seed, backend=config.agents.backend, mode=config.agents.mode,
                    workers=config.run.workers, fix_attempts=config.run.fix_attempts,
                    agents={} if config.agents.backend == "builtin" else config.public())
    return archive, archive.new_run(run), run


def run_to_end(archive: Archive, run_id: str, config: RunConfig, machine: MachineSpec, console: Console,
               quiet: bool, replay: str | None = None) -> Outcome:
    """Runs until the budget is spent or something stops it; nothing recorded is ever lost."""
    from agents.llm.errors import BudgetExhausted, LLMConfigError, ProviderDown, ReplayMiss

    resume = f"cubepilot run --resume {run_id}" + archive_flag({"archive": str(archive.path)})
    stop_on_signals()
    try:
        summary = execute(archive, run_id, config, machine, console, quiet, replay)
        archive.set_status(run_id, "done")
        return Outcome(summary, "budget")
    except KeyboardInterrupt:
        return Outcome(interrupted_summary(archive, run_id), "stopped", 130)
    except BudgetExhausted as exc:
        archive.set_status(run_id, "done")
        return Outcome(summarize(archive, run_id, completed=True), f"{exc.budget} budget spent")
    except WorkerCrashed as exc:
        summary = interrupted_summary(archive, run_id, on_purpose=False)
        return Outcome(summary, "worker crashed", 2, f"{exc}. Resume with:\n  {resume}\n(add --workers 1 if memory "
                       "is short)")
    except ProviderDown as exc:
        summary = interrupted_summary(archive, run_id)
        return Outcome(summary, "provider down", 3, f"{exc}\nNothing is lost; when the server answers again:\n  {resume}")
    except NoProgress as exc:
        summary = interrupted_summary(archive, run_id)
        return Outcome(summary, "no progress", 3, f"{exc} (malformed answers, kernels identical to ones already "
                       f"evaluated); look at the model calls with `cubepilot archive calls {run_id}`. Resume with:\n  {resume}")
    except ReplayMiss as exc:
        summary = interrupted_summary(archive, run_id)
        return Outcome(summary, "replay miss", 2, f"{exc}; the recorded run {replay} has no answer for this prompt "
                       "(the code, prompts or configuration changed since it was recorded)")
    except LLMConfigError as exc:
        summary = interrupted_summary(archive, run_id)
        return Outcome(summary, "configuration", 2, f"{exc}\nFix it, then resume with:\n  {resume}")


def execute(archive: Archive, run_id: str, config: RunConfig, machine: MachineSpec, console: Console,
            quiet: bool, replay: str | None = None) -> RunSummary:
    task = get_task(config.task)
    agents = validate(config.agents, f"run {run_id}'s recorded configuration") if config.agents else Config()
    agents = agents.model_copy(update={"run": agents.run.model_copy(update={"fix_attempts": config.fix_attempts}),
                                       "agents": agents.agents.model_copy(update={"mode": config.mode,
                                                                                  "backend": config.backend})})
    crew = build_team(agents, machine, task.parse_shape(config.shape), archive, run_id, replay)
    make_context = default_context(config, machine, roofline=agents.agents.roofline)
    with open_executor(config.workers, archive.path.parent / "cache") as executor:
        def run_batch(steps: list[tuple[str, int]]) -> Iterator[EvalResult]:
            return executor.map([step_job(config, machine, source, seq) for source, seq in steps])
        return _with_progress(archive, run_id, config, crew, run_batch, make_context, console, quiet)


def step_job(config: RunConfig, machine: MachineSpec, source: str, seq: int) -> EvalJob:
    """The evaluation of step seq: its test inputs come from (run seed, seq), so its result
    does not depend on which worker evaluates it."""
    return EvalJob(source, config.task, machine, config.shape, EvalConfig(seed=config.seed * 100_003 + seq))


def _with_progress(archive: Archive, run_id: str, config: RunConfig, crew: Crew, run_batch: Evaluate,
                   make_context, console: Console, quiet: bool) -> RunSummary:
    done = len(archive.evaluations(run_id))
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("best {task.fields[best]}"), TextColumn("failures {task.fields[failures]}"),
               TextColumn("{task.fields[spent]}"), TimeElapsedColumn()]
    with Progress(*columns, console=console, disable=quiet, transient=False) as bar:
        tid = bar.add_task(f"{config.task} / {config.machine}", total=config.budget, completed=done,
                           best="-", failures=0, spent=crew.spent())

        def progress(seq, strategy, result, elites, failures):
            best = elites.best()
            text = f"{best[1].tflops:.1f} TFLOP/s ({best[1].pct_of_roofline:.0f}% of roofline)" if best else "-"
            bar.update(tid, completed=seq + 1, best=text, failures=failures, spent=crew.spent())

        return evolve(archive, run_id, config, crew.team, run_batch, progress, make_context)


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


def print_summary(console: Console, d: dict, outcome: Outcome) -> None:
    spend = d.get("spend") or {}
    if spend.get("calls"):
        console.print(f"Model calls: {spend['calls']}, {spend['tokens_in']:,} tokens in, {spend['tokens_out']:,} out, "
                      f"${spend['cost_usd']:.4f}" + (f"; ended: {outcome.reason}" if outcome.reason != "budget" else ""),
                      highlight=False)
    if outcome.reason == "stopped":
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


__all__ = ["DEFAULT_ARCHIVE", "Outcome", "RunInputError", "execute", "run_to_end", "settle_config", "start_or_resume",
           "summary_dict", "print_summary"]


FAILURE_SHARE = 0.5        # dry-run assumption: half the steps fail and get their fixes


def dry_run(console: Console, config: Config, machine: MachineSpec, as_json: bool) -> dict:
    """What a run would send, and what it would cost: prompt sizes per role from the real
    prompt builders on the run's first context, calls per step, and the spend of the whole
    budget, low (answers as long as typical, no re-asks) and high (every answer at max_tokens,
    every call re-asked as often as allowed). No model is called, nothing is evaluated."""
    from rich.table import Table

    from agents.llm.ledger import estimate_tokens
    from agents.llm.roles import first_prompt
    from strategies.evolution import Elites
    from strategies.families import families_for

    task = get_task(config.run.task)
    shape = task.format_shape(task.parse_shape(config.run.shape) if config.run.shape else task.bench_shape)
    out = {"task": task.name, "machine": machine.name, "shape": shape, "budget": config.run.budget,
           "backend": config.agents.backend, "roles": []}
    if config.agents.backend == "builtin":
        out["cost_usd"] = {"low": 0.0, "high": 0.0}
        if not as_json:
            console.print(f"builtin backend: no model calls, no cost; {config.run.budget} evaluations of {task.name} "
                          f"at {shape} on {machine.name}.", highlight=False)
        else:
            print(json.dumps(out))
        return out
    run = RunConfig(task=task.name, machine=machine.name, shape=shape, budget=config.run.budget, seed=config.run.seed)
    seeds = [f.strategy() for f in families_for(task.name)]
    ctx = default_context(run, machine, config.agents.roofline)(elites=Elites())
    kernel_tokens = estimate_tokens(families_for(task.name)[0].implement(seeds[0]))
    steps = max(0, config.run.budget - len(seeds))
    fixes = steps * FAILURE_SHARE * config.run.fix_attempts
    low = high = 0.0
    for role, calls in (("strategist", steps), ("coder", steps), ("fixer", fixes)):
        for arm in config.arms(role):
            settings = config.models[arm.model]
            share = arm.weight / sum(a.weight for a in config.arms(role))
            prompt = first_prompt(role, ctx, settings)
            typical = 400 if role == "strategist" else kernel_tokens + 100     # a JSON strategy, a whole kernel
            n = calls * share
            answer = min(typical, prompt.max_tokens)
            price_in, price_out = (settings.price_in or 0.0) / 1e6, (settings.price_out or 0.0) / 1e6
            row_low = n * (prompt.prompt_tokens * price_in + answer * price_out)
            turns = 1 + config.agents.reasks
            row_high = n * turns * ((prompt.prompt_tokens + prompt.max_tokens) * price_in + prompt.max_tokens * price_out)
            low, high = low + row_low, high + row_high
            out["roles"].append({"role": role, "model": arm.model, "calls": round(n, 1), "prompt_tokens": prompt.prompt_tokens,
                                 "answer_tokens": answer, "max_tokens": prompt.max_tokens, "dropped": list(prompt.dropped),
                                 "cost_usd_low": round(row_low, 4), "cost_usd_high": round(row_high, 4)})
    out["cost_usd"] = {"low": round(low, 4), "high": round(high, 4)}
    if as_json:
        print(json.dumps(out))
        return out
    table = Table(title=f"Dry run: {task.name} at {shape} on {machine.name}, {config.run.budget} evaluations "
                        f"({len(seeds)} seed kernels, then {steps} model-written steps)")
    for col in ("role", "model", "calls", "prompt tok", "answer tok", "max tok", "$ low", "$ high", "left out"):
        table.add_column(col, justify="left" if col in ("role", "model", "left out") else "right")
    for r in out["roles"]:
        table.add_row(r["role"], r["model"], f"{r['calls']:g}", str(r["prompt_tokens"]), str(r["answer_tokens"]),
                      str(r["max_tokens"]), f"{r['cost_usd_low']:.4f}", f"{r['cost_usd_high']:.4f}",
                      ", ".join(r["dropped"]) or "-")
    console.print(table)
    budget = config.budget.dollars
    console.print(f"Estimated cost: ${low:.4f} to ${high:.4f}" + (f" (dollar budget ${budget:g})" if budget else "")
                  + f"; assumes {FAILURE_SHARE:.0%} of steps fail and get {config.run.fix_attempts} fix(es). "
                  "Nothing was sent.", highlight=False)
    return out

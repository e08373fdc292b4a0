"""Evolution figures: LRQMM on qgemm, evolved SGEMM against the hand-written kernel,
strategy-coordinated search against its ablations, and evolved attention.

    python benchmarks/evolution.py [--json] [--sections lrqmm,sgemm,attention]
        [--budget 200] [--seeds 0,1,2] [--modes strategy,mutation-only,random]
        [--attention-budget 60] [--jobs 2] [--dir .cubepilot/bench-evolution] [--deadline SECONDS]

Each (task, mode, seed) is one `cubepilot run` in its own SQLite archive under --dir, run as
a subprocess, --jobs at a time. A run found in its archive is resumed where it stopped (or
only summarized when complete), so the benchmark can be stopped and started again without
losing evaluations; --deadline stops the runs cleanly (SIGTERM: the evaluation in flight is
the most that is lost) and the tables then say which runs are incomplete.

Sections:
- lrqmm: benchmarks/lrqmm.py's table (INT8 direct, INT8 + dense / low-rank residual, ...).
- sgemm: sgemm on ascend-910a at 4096^3 (--sgemm-shape), the three search modes x seeds at the same budget.
  Speedup is against the hand-written SGEMM-cube double-buffered kernel (library sgemm_cube,
  evaluated inside every run); % of peak is of the FP32-equivalent (FP16/3) peak. "found by
  search" leaves out the library seeds every mode starts from (the same initial population
  for all modes), so it measures the search itself. Also the best-so-far after 8/25/50/..
  evaluations (speedup vs hand-written), mean over seeds, per mode.
- attention: attention (1x8x4096x128, non-causal) on ascend-910a, strategy mode.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.loop import summarize  # noqa: E402
from strategies.archive import Archive  # noqa: E402

MACHINE = "ascend-910a"
BASELINE_FAMILY = "sgemm_cube"          # the hand-written SGEMM-cube double-buffered kernel
CHECKPOINTS = (8, 25, 50, 100, 150, 200, 300, 400)


@dataclass(frozen=True)
class Job:
    task: str
    mode: str
    seed: int
    budget: int
    shape: str | None = None          # None: the task's benchmark shape
    workers: int = 1                  # evaluations side by side within the run (batches of this size)

    @property
    def name(self) -> str:
        return f"{self.task}{'-' + self.shape if self.shape else ''}-{self.mode}-s{self.seed}"


def archive_of(job: Job, root: Path) -> Path:
    return root / f"{job.name}.sqlite"


def existing_run(path: Path) -> tuple[str, int] | None:
    """(run id, evaluations recorded) of the run in this archive, if there is one."""
    if not path.exists():
        return None
    archive = Archive(path)
    try:
        runs = archive.runs()
        return (runs[0]["id"], runs[0]["evaluations"]) if runs else None
    finally:
        archive.close()


def command(job: Job, root: Path) -> list[str] | None:
    """The `cubepilot run` that starts or continues this job; None when it is complete."""
    base = [sys.executable, "-m", "agents.cli", "run", "--json", "--budget", str(job.budget),
            "--archive", str(archive_of(job, root))]
    found = existing_run(archive_of(job, root))
    if found is None:
        shape = ["--shape", job.shape] if job.shape else []
        return base + ["--task", job.task, "--machine", MACHINE, "--seed", str(job.seed), "--mode", job.mode,
                       "--workers", str(job.workers)] + shape
    run_id, done = found
    return None if done >= job.budget else base + ["--resume", run_id, "--workers", str(job.workers)]


def run_jobs(jobs: list[Job], root: Path, parallel: int, deadline: float | None, log) -> None:
    """Run the jobs' subprocesses, `parallel` at a time; at the deadline (or on Ctrl-C / SIGTERM
    of this process), SIGTERM the live ones: they stop cleanly and resume on the next call."""
    root.mkdir(parents=True, exist_ok=True)
    queue = [(job, cmd) for job in jobs if (cmd := command(job, root)) is not None]
    live: list[tuple[Job, subprocess.Popen]] = []
    stopping = False
    while queue or live:
        while queue and len(live) < parallel and not stopping:
            job, cmd = queue.pop(0)
            log(f"start {job.name}")
            live.append((job, subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL,
                                               stderr=open(root / f"{job.name}.log", "a"))))
        try:
            time.sleep(1.0)
        except KeyboardInterrupt:
            deadline = 0.0
        if deadline is not None and time.time() > deadline and not stopping:
            stopping = True
            log("deadline reached: stopping the runs (they resume on the next call)")
            for _, proc in live:
                proc.send_signal(signal.SIGTERM)
            queue.clear()
        for job, proc in list(live):
            if proc.poll() is not None:
                live.remove((job, proc))
                log(f"end {job.name} (exit {proc.returncode})")


def run_figures(job: Job, root: Path) -> dict | None:
    found = existing_run(archive_of(job, root))
    if found is None:
        return None
    archive = Archive(archive_of(job, root))
    try:
        rows = archive.evaluations(found[0])
        summary = summarize(archive, found[0])
    finally:
        archive.close()
    base = [r.result for r in rows if r.strategy.family == BASELINE_FAMILY and r.strategy.origin == "library"
            and r.result.ok]
    best_so_far, curve = float("inf"), []
    for r in rows:
        if r.result.ok:
            best_so_far = min(best_so_far, r.result.time_ns)
        curve.append(best_so_far)
    best = summary.best[1] if summary.best else None
    searched = [r.result.time_ns for r in rows if r.result.ok and r.strategy.origin != "library"]
    return {
        "job": job.name, "task": job.task, "shape": job.shape, "mode": job.mode, "seed": job.seed, "run_id": found[0],
        "evaluations": len(rows), "budget": job.budget, "complete": len(rows) >= job.budget,
        "failures": summary.failures,
        "best_tflops": round(best.tflops, 2) if best else None,
        "best_pct_of_peak": round(best.pct_of_peak, 2) if best else None,
        "best_pct_of_roofline": round(best.pct_of_roofline, 2) if best else None,
        "best_family": summary.best[0].family if summary.best else None,
        "best_plan": summary.best[0].plan if summary.best else None,
        "handwritten_tflops": round(base[0].tflops, 2) if base else None,
        "handwritten_time_ns": base[0].time_ns if base else None,
        # what the search itself found, library seeds excluded: the fair comparison of search modes
        "searched_speedup_vs_handwritten": round(base[0].time_ns / min(searched), 3) if base and searched else None,
        "speedup_vs_handwritten": round(base[0].time_ns / best.time_ns, 3) if base and best else None,
        "best_time_ns_after": {str(n): curve[n - 1] for n in CHECKPOINTS if n <= len(curve)},
    }


def mean_spread(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": round(statistics.fmean(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "n": len(values)}


def compare_modes(runs: list[dict], modes: list[str]) -> list[dict]:
    table = []
    for mode in modes:
        mine = [r for r in runs if r["mode"] == mode]
        row = {"mode": mode, "runs": len(mine), "complete": sum(r["complete"] for r in mine),
               "speedup_vs_handwritten": mean_spread([r["speedup_vs_handwritten"] for r in mine]),
               "best_pct_of_peak": mean_spread([r["best_pct_of_peak"] for r in mine]),
               "searched_speedup_vs_handwritten": mean_spread([r["searched_speedup_vs_handwritten"] for r in mine]),
               "failures": mean_spread([r["failures"] for r in mine]),
               "best_tflops": mean_spread([r["best_tflops"] for r in mine])}
        for n in CHECKPOINTS:                 # mean best speedup after n evaluations
            speed = [r["handwritten_time_ns"] / t for r in mine
                     if (t := r["best_time_ns_after"].get(str(n))) and r["handwritten_time_ns"] and t != float("inf")]
            if speed:
                row[f"speedup_after_{n}"] = round(statistics.fmean(speed), 3)
        table.append(row)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--sections", default="lrqmm,sgemm,attention")
    parser.add_argument("--budget", type=int, default=200, help="evaluations per sgemm run (default 200)")
    parser.add_argument("--sgemm-shape", default=None, help="MxNxK of the sgemm runs (default: 4096x4096x4096)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--modes", default="strategy,mutation-only,random")
    parser.add_argument("--attention-budget", type=int, default=60)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--workers", type=int, default=1,
                        help="evaluations side by side within each run (cubepilot run --workers; a run's search "
                             "then proposes in batches of this size); jobs x workers processes in all")
    parser.add_argument("--dir", type=Path, default=ROOT / ".cubepilot" / "bench-evolution")
    parser.add_argument("--deadline", type=float, default=None, help="stop the runs after this many seconds")
    parser.add_argument("--report-only", action="store_true", help="only read the archives, start nothing")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    sections = args.sections.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    modes = args.modes.split(",")
    deadline = time.time() + args.deadline if args.deadline else None
    log = (lambda msg: print(msg, file=sys.stderr, flush=True))

    jobs = []
    if "sgemm" in sections:
        jobs += [Job("sgemm", mode, seed, args.budget, args.sgemm_shape, args.workers) for mode in modes
                 for seed in seeds]
    if "attention" in sections:
        jobs += [Job("attention", "strategy", seed, args.attention_budget, None, args.workers) for seed in seeds]
    if not args.report_only:
        run_jobs(jobs, args.dir, args.jobs, deadline, log)
    runs = [r for job in jobs if (r := run_figures(job, args.dir))]
    out: dict = {"machine": MACHINE, "budget": args.budget, "seeds": seeds,
                 "sgemm_shape": args.sgemm_shape or "4096x4096x4096", "runs": runs}
    if "sgemm" in sections:
        out["sgemm_modes"] = compare_modes([r for r in runs if r["task"] == "sgemm"], modes)
    if "attention" in sections:
        att = [r for r in runs if r["task"] == "attention"]
        out["attention"] = {"best_pct_of_roofline": mean_spread([r["best_pct_of_roofline"] for r in att]),
                            "best_tflops": mean_spread([r["best_tflops"] for r in att])}
    if "lrqmm" in sections:
        sys.path.insert(0, str(Path(__file__).parent))
        from lrqmm import lrqmm_rows
        out["lrqmm"] = lrqmm_rows()
    if args.json:
        print(json.dumps(out, default=str))
    else:
        print_tables(out)


def fmt(ms: dict, spec: str = ".2f") -> str:
    if ms["mean"] is None:
        return "-"
    return f"{ms['mean']:{spec}} [{ms['min']:{spec}}, {ms['max']:{spec}}]"


def print_tables(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=170)
    if out.get("runs"):
        t = Table(title="Runs")
        for col in ("run", "evals", "failures", "best TFLOP/s", "% peak", "% roofline", "vs hand-written", "best family"):
            t.add_column(col)
        for r in out["runs"]:
            evals = f"{r['evaluations']}/{r['budget']}" + ("" if r["complete"] else " (incomplete)")
            t.add_row(r["job"], evals, str(r["failures"]), str(r["best_tflops"]), str(r["best_pct_of_peak"]),
                      str(r["best_pct_of_roofline"]), str(r["speedup_vs_handwritten"] or "-"), str(r["best_family"]))
        console.print(t)
    if out.get("sgemm_modes"):
        t = Table(title=f"sgemm {out['sgemm_shape']} on {out['machine']}: search modes, mean \\[min, max] over seeds")
        cols = ["mode", "runs (complete)", "speedup vs hand-written", "% of FP32-eq peak", "found by search",
                "failures"] + \
            [f"after {n}" for n in CHECKPOINTS if any(f"speedup_after_{n}" in r for r in out["sgemm_modes"])]
        for col in cols:
            t.add_column(col)
        for r in out["sgemm_modes"]:
            t.add_row(r["mode"], f"{r['runs']} ({r['complete']})", fmt(r["speedup_vs_handwritten"], ".3f"),
                      fmt(r["best_pct_of_peak"], ".1f"), fmt(r["searched_speedup_vs_handwritten"], ".3f"),
                      fmt(r["failures"], ".1f"), *[str(r.get(f"speedup_after_{c.split()[1]}", "-")) for c in cols[6:]])
        console.print(t)
    if out.get("attention"):
        a = out["attention"]
        console.print(f"attention 1x8x4096x128 non-causal: best evolved {fmt(a['best_pct_of_roofline'], '.1f')} % of "
                      f"roofline, {fmt(a['best_tflops'], '.1f')} TFLOP/s")
    if out.get("lrqmm"):
        console.print_json(json.dumps(out["lrqmm"], default=str))


if __name__ == "__main__":
    main()

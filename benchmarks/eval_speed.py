"""Speed of the evaluation cascade: full evaluations at the benchmark shapes, a small candidate,
the sandbox round trip and a cache hit; optionally side by side with another checkout.

    python benchmarks/eval_speed.py [--json] [--repeats 3] [--baseline /tmp/old-worktree] [--cases a,b]

Each evaluation case runs in a fresh process per code tree, after one warm-up evaluation
(imports, the sandbox's fork server, the timing engine's compiled code: what a run's
evaluating worker pays once), alternating trees repeat by repeat; a figure is the
median of the repeats: wall seconds and CPU seconds of the whole process tree (the
evaluator, its sandbox children and the fork server's children). Targets (issue 13):
sgemm_cube 4096^3 <= 1.5 s, termwise (CHUNK=256) 4096^3 <= 8 s, flash attention at its
benchmark shape <= 2 s, small-shape cascade <= 0.3 s; cache hit < 10 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]

CASES = {   # name: (family, knobs, task, shape)
    "small_cascade": ("hgemm_cube", {}, "hgemm", "256x256x256"),
    "sgemm_cube_4096": ("sgemm_cube", {}, "sgemm", "4096x4096x4096"),
    "termwise_chunk256_4096": ("sgemm_termwise", {"CHUNK": 256}, "sgemm", "4096x4096x4096"),
    "flash_attention_bench": ("attention_flash", {}, "attention", "1x8x4096x128"),
}
TARGETS_S = {"small_cascade": 0.3, "sgemm_cube_4096": 1.5, "termwise_chunk256_4096": 8.0,
             "flash_attention_bench": 2.0}
_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_s() -> float:
    """CPU seconds of this process, its reaped children, and its live children with theirs
    (the fork server reaps the sandbox children it forks)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime
    me = str(os.getpid())
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[1] == me:          # ppid; then utime, stime, cutime, cstime
            total += sum(int(x) for x in fields[11:15]) / _TICKS
    return total


def measure(case: str, repeats: int) -> dict:
    """In a process whose sys.path starts with the code tree to measure: evaluate `case`."""
    from evaluator.cascade import EvalConfig, evaluate
    from evaluator.sandbox import SandboxLimits
    from evaluator.tasks import get_task
    from hwmodel import timing
    from hwmodel.spec import load_machine
    from strategies.families import FAMILIES

    machine = load_machine("ascend-910a")

    def job(name: str):
        family, knobs, task_name, shape = CASES[name]
        fam, task = FAMILIES[family], get_task(task_name)
        source = fam.implement(fam.strategy(knobs)) if knobs else fam.source
        return source, task, task.parse_shape(shape)

    source, task, shape = job("small_cascade")
    evaluate(source, task, machine, shape, EvalConfig(seed=1))          # warm-up
    warm_timing = getattr(timing, "compiled_loop_loads", getattr(timing, "_compiled_loop_loads", None))
    if warm_timing is not None:   # numba's cached machine code: loaded once per evaluating process
        warm_timing()
    source, task, shape = job(case)
    walls, cpus, status = [], [], ""
    for i in range(repeats):
        cpu, started = tree_cpu_s(), time.perf_counter()
        # generous sandbox limits: on a loaded machine the session-start code's recording of the
        # termwise family at 4096^3 takes longer than the default 60 s wall clock
        config = EvalConfig(seed=100 + i, limits=SandboxLimits(wall_s=900, cpu_s=900))
        result = evaluate(source, task, machine, shape, config)
        walls.append(time.perf_counter() - started)
        cpus.append(tree_cpu_s() - cpu)
        status = result.status.value
    return {"wall_s": walls, "cpu_s": cpus, "status": status, "time_ns": result.time_ns}


def run_case(tree: Path, case: str, repeats: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE), "--measure", case, "--root", str(tree), "--repeats", str(repeats)],
                         capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def quick_figures(repeats: int) -> dict:
    """Sandbox round trip and cache hit of this tree, in this process."""
    from evaluator.cascade import EvalCache, EvalConfig, evaluate
    from evaluator.sandbox import SandboxLimits, record_in_sandbox
    from evaluator.tasks import get_task
    from hwmodel.spec import load_machine
    from strategies.library import kernel_path

    machine, hgemm = load_machine("ascend-910a"), get_task("hgemm")
    small_src = kernel_path("hgemm_cube").read_text()
    tiny = {"64x64x64": hgemm.args((64, 64, 64))}

    def timed(fn) -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    record_in_sandbox(small_src, machine, list(hgemm.arg_names), tiny, SandboxLimits())   # starts the fork server
    roundtrip = [timed(lambda: record_in_sandbox(small_src, machine, list(hgemm.arg_names), tiny, SandboxLimits()))
                 for _ in range(repeats)]
    cache = EvalCache()
    evaluate(small_src, hgemm, machine, (256, 256, 256), EvalConfig(), cache)
    hits = [timed(lambda: evaluate(small_src, hgemm, machine, (256, 256, 256), EvalConfig(), cache))
            for _ in range(repeats)]
    return {"sandbox_roundtrip_s": round(statistics.median(roundtrip), 3),
            "cache_hit_ms": round(1e3 * statistics.median(hits), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--repeats", type=int, default=3, help="evaluations per figure; the median is reported")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure (default: this one)")
    parser.add_argument("--baseline", type=Path, help="another checkout (e.g. a git worktree) to measure side by side")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        sys.path.insert(0, str(args.root))
        print(json.dumps(measure(args.measure, args.repeats)))
        return
    sys.path.insert(0, str(ROOT))
    trees = {"now": args.tree.resolve(), **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    figures: dict = {"trees": {k: str(v) for k, v in trees.items()}, "cases": {}}
    for case in args.cases.split(","):
        runs = {name: {"wall_s": [], "cpu_s": []} for name in trees}
        for _ in range(args.repeats):                  # alternate the trees: the machine's load hits both
            for name, tree in trees.items():
                got = run_case(tree, case, 1)
                runs[name]["wall_s"] += got["wall_s"]
                runs[name]["cpu_s"] += got["cpu_s"]
                runs[name].update(status=got["status"], time_ns=got["time_ns"])
        figures["cases"][case] = {name: {"wall_s": round(statistics.median(r["wall_s"]), 3),
                                         "cpu_s": round(statistics.median(r["cpu_s"]), 3),
                                         "status": r["status"], "time_ns": r["time_ns"],
                                         "repeats_cpu_s": [round(x, 3) for x in r["cpu_s"]]}
                                  for name, r in runs.items()}
    figures.update(quick_figures(max(3, args.repeats)))
    if args.json:
        print(json.dumps(figures))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title="Evaluation speed (ascend-910a): median wall / CPU seconds of the process tree")
    table.add_column("case")
    for name in trees:
        table.add_column(f"{name} wall s", justify="right")
        table.add_column(f"{name} CPU s", justify="right")
    table.add_column("target s", justify="right")
    for case, by_tree in figures["cases"].items():
        row = [case]
        for name in trees:
            row += [f"{by_tree[name]['wall_s']:.2f}", f"{by_tree[name]['cpu_s']:.2f}"]
        table.add_row(*row, f"<= {TARGETS_S[case]}")
    Console(width=120).print(table)
    print(f"sandbox round trip {figures['sandbox_roundtrip_s']} s, cache hit {figures['cache_hit_ms']} ms")


if __name__ == "__main__":
    main()

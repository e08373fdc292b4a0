"""The timing corpus: what the simulator says for a fixed set of kernels, frozen to compare against.

    python benchmarks/timing_corpus.py --freeze      # write tests/data/timing_corpus.json
    python benchmarks/timing_corpus.py               # compare the current code with it

A case is (library family, knobs, shape, machine): its recorded trace's op count and the
timing engine's cycles, time, per-core times, per-pipe busy fractions, bytes per path, op
counts, L2 hit bytes and HBM bytes (or the error it ends in). A few small-shape evaluations
add the whole cascade: status, rule, message, errors, budgets, benchmark error and time.
tests/test_timing_corpus.py checks that the current code reproduces every figure bit for
bit (floats are stored as Python writes them, which reads back to the same double). Freeze
from committed code: a change to the timing engine or presets that moves a figure re-freezes
it in the same commit, saying why.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from threadpoolctl import threadpool_limits  # noqa: E402

from evaluator.cascade import EvalConfig, evaluate  # noqa: E402
from evaluator.sandbox import SandboxLimits  # noqa: E402
from evaluator.tasks import get_task  # noqa: E402
from hwmodel.dsl import record_trace  # noqa: E402
from hwmodel.loader import load_kernel_source  # noqa: E402
from hwmodel.simulate import declare  # noqa: E402
from hwmodel.spec import load_machine  # noqa: E402
from hwmodel.timing import simulate_timing  # noqa: E402
from strategies.families import FAMILIES  # noqa: E402

CORPUS = ROOT / "tests" / "data" / "timing_corpus.json"
VERSION = 1


@dataclass(frozen=True)
class Case:
    family: str
    knobs: tuple[tuple[str, object], ...]
    shape: tuple[int, ...]
    machine: str

    @property
    def name(self) -> str:
        knobs = ",".join(f"{k}={v}" for k, v in self.knobs)
        return f"{self.family}[{knobs}]@{'x'.join(map(str, self.shape))}/{self.machine}"


GEMM_SMALL, GEMM_MID, GEMM_BENCH = (256, 256, 256), (1024, 512, 768), (2048, 2048, 2048)
ATT_SMALL, ATT_MID = (1, 2, 256, 64), (1, 4, 1024, 128)
_VARIANTS: dict[str, tuple[dict, ...]] = {   # beyond the defaults: knobs that change the schedule
    "sgemm_cube": ({"SLOTS": 1}, {"GROUP": 4, "BK1": 128}),
    "sgemm_cube_otf": ({"SPLIT_SLOTS": 2},),
    "sgemm_termwise": ({"CHUNK": 256}, {"CHUNK": 0, "ACC_SLOTS": 1}),
    "sgemm_vector": ({"SLOTS": 1},),
    "hgemm_cube": ({"SLOTS": 3, "GROUP": 2},),
    "qgemm_int8": ({"QROWS_A": 8},),
    "qgemm_fp16": ({"SLOTS": 1},),
    "attention_flash": ({"SLOTS": 1, "BQ": 64},),
    "attention_xyserve": ({"SLOTS": 1},),
}


def _gemm(family: str) -> bool:
    return FAMILIES[family].task not in ("attention", "attention-causal")


def cases() -> list[Case]:
    out = []
    for family in FAMILIES:                  # every family on the 910A, defaults, small and mid shapes
        small, mid = (GEMM_SMALL, GEMM_MID) if _gemm(family) else (ATT_SMALL, ATT_MID)
        for shape in (small, mid):
            out.append(Case(family, (), shape, "ascend-910a"))
        for knobs in _VARIANTS.get(family, ()):
            out.append(Case(family, tuple(sorted(knobs.items())), mid, "ascend-910a"))
    out += [                                  # benchmark-ish shapes
        Case("sgemm_cube", (), (4096, 4096, 4096), "ascend-910a"),
        Case("sgemm_termwise", (("CHUNK", 256),), (1024, 1024, 2048), "ascend-910a"),
        Case("hgemm_cube", (), GEMM_BENCH, "ascend-910a"),
        Case("qgemm_int8", (), GEMM_BENCH, "ascend-910a"),
        Case("attention_flash", (), (1, 8, 4096, 128), "ascend-910a"),
        Case("attention_flash_causal", (), (1, 8, 2048, 128), "ascend-910a"),
    ]
    for machine in ("ascend-910b", "h100"):  # other machines: a few families, small and mid
        for family in ("sgemm_cube", "hgemm_cube", "qgemm_int8", "attention_flash", "attention_xyserve"):
            small, mid = (GEMM_SMALL, GEMM_MID) if _gemm(family) else (ATT_SMALL, ATT_MID)
            for shape in (small, mid):
                out.append(Case(family, (), shape, machine))
    out.append(Case("sgemm_cube", (), GEMM_BENCH, "ascend-910b"))
    return out


# (kernel: family name or red-team file, task, shape) evaluated through the whole cascade
EVALUATIONS = [
    ("hgemm_cube", "hgemm", "256x256x256"),
    ("sgemm_cube", "sgemm", "512x512x512"),
    ("sgemm_termwise", "sgemm", "512x512x512"),
    ("qgemm_int8_dense", "qgemm", "512x512x512"),
    ("attention_flash", "attention", "1x2x256x64"),
    ("attention_flash_causal", "attention-causal", "1x2x512x64"),
    ("redteam/constant_output", "sgemm", "512x512x512"),
    ("redteam/fp16_downgrade", "sgemm", "512x512x512"),
    ("redteam/decoy_writes", "hgemm", "512x512x512"),
    ("redteam/flash_no_running_max", "attention", "1x2x512x64"),
    ("redteam/lazy_cores", "hgemm", "512x512x512"),
    ("redteam/workspace_huge", "sgemm", "512x512x512"),
]
EVAL_SEED = 11
# Relative errors are norms, and BLAS sums a long dot product in one part per thread: the
# last bits of an error depend on the thread count, so evaluations run on a fixed one.
BLAS_THREADS = 2
RESULT_FIELDS = ("status", "stage", "rule", "message", "line", "errors", "budgets", "bench_error", "trials",
                 "time_ns", "tflops", "pct_of_peak", "pct_of_roofline", "bottleneck", "pipe_busy", "l2_hit_rate",
                 "hbm_bytes", "ops")


def kernel_source(family: str, knobs: dict) -> str:
    fam = FAMILIES[family]
    return fam.implement(fam.strategy(knobs)) if knobs else fam.source


def timing_figures(case: Case) -> dict:
    """What the simulator says for one case: its figures, or the error it ends in."""
    machine = load_machine(case.machine)
    task = get_task(FAMILIES[case.family].task)
    try:
        kernel = load_kernel_source(kernel_source(case.family, dict(case.knobs)), f"{case.family}.py")
        trace = record_trace(kernel, machine, declare(task.args(case.shape)))
        t = simulate_timing(trace, machine)
    except Exception as exc:     # HwError, or a library kernel's own refusal (e.g. a missing data path)
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {"ops": trace.num_ops, "cycles": t.cycles, "time_ns": t.time_ns, "core_time_ns": list(t.core_time_ns),
            "pipe_busy": t.pipe_busy, "bytes_by_path": t.bytes_by_path, "op_counts": t.op_counts,
            "l2_hit_bytes": t.l2_hit_bytes, "hbm_bytes": t.hbm_bytes, "active_cores": t.active_cores}


def evaluation_figures(kernel: str, task_name: str, shape: str) -> dict:
    task = get_task(task_name)
    if kernel.startswith("redteam/"):
        source = (ROOT / "tests" / f"{kernel}.py").read_text()
    else:
        source = FAMILIES[kernel].source
    with threadpool_limits(BLAS_THREADS, user_api="blas"):
        result = evaluate(source, task, load_machine("ascend-910a"), task.parse_shape(shape),
                          EvalConfig(seed=EVAL_SEED, limits=SandboxLimits(wall_s=60, cpu_s=60, memory_bytes=2**30)))
    data = result.model_dump(mode="json")
    return {f: data[f] for f in RESULT_FIELDS}


def compute(verbose: bool = False) -> dict:
    timing, evaluations = {}, {}
    for case in cases():
        started = time.perf_counter()
        timing[case.name] = timing_figures(case)
        if verbose:
            print(f"{time.perf_counter() - started:6.2f} s  {case.name}", file=sys.stderr)
    for kernel, task, shape in EVALUATIONS:
        started = time.perf_counter()
        evaluations[f"{kernel}/{task}@{shape}"] = evaluation_figures(kernel, task, shape)
        if verbose:
            print(f"{time.perf_counter() - started:6.2f} s  {kernel} {task} {shape}", file=sys.stderr)
    return {"version": VERSION, "timing": timing, "evaluations": evaluations}


def differences(frozen: dict, current: dict, path: str = "") -> list[str]:
    """Every place where `current` differs from `frozen` (exact comparison, floats included)."""
    if isinstance(frozen, dict) and isinstance(current, dict):
        out = [f"{path}/{k}: missing now" for k in frozen if k not in current]
        out += [f"{path}/{k}: new" for k in current if k not in frozen]
        for k in frozen:
            if k in current:
                out += differences(frozen[k], current[k], f"{path}/{k}")
        return out
    if isinstance(frozen, list) and isinstance(current, list) and len(frozen) == len(current):
        return [d for i, (a, b) in enumerate(zip(frozen, current)) for d in differences(a, b, f"{path}[{i}]")]
    return [] if frozen == current and type(frozen) is type(current) else [f"{path}: frozen {frozen!r}, now {current!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--freeze", action="store_true", help=f"write {CORPUS.relative_to(ROOT)}")
    args = parser.parse_args()
    current = json.loads(json.dumps(compute(verbose=True)))   # the same JSON round trip as the frozen file
    if args.freeze:
        CORPUS.parent.mkdir(parents=True, exist_ok=True)
        CORPUS.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
        print(f"froze {len(current['timing'])} timing cases and {len(current['evaluations'])} evaluations "
              f"into {CORPUS}")
        return 0
    diffs = differences(json.loads(CORPUS.read_text()), current)
    print("\n".join(diffs) if diffs else "the current code reproduces the corpus exactly")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())

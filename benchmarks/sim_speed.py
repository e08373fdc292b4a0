"""Speed of the simulator itself: how long timing and numeric runs take on this machine.

    python benchmarks/sim_speed.py [--json] [--repeats 3]

Targets (project's simulator issue): timing the double-buffered SGEMM-cube kernel at
4096^3 in timing-only mode <= 2 s; a full numeric run at 1024^3 <= 5 s (2-core machine);
issue 13: timing-only 4096^3 <= 0.3 s (recording is most of it now). The timing engine alone
on recorded traces: SGEMM-cube 4096^3 (910A), HGEMM-cube 4096^3 on h100 with the H100
cross-check's knobs, flash attention at its benchmark shape (910A). `timing_first_call_s` is
the first engine call of the process (importing numba, loading its cached machine code).
Each figure is the median of the repeats; all cases run side by side in one process.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluator.tasks import get_task  # noqa: E402
from hwmodel.dsl import record_trace  # noqa: E402
from hwmodel.loader import load_kernel  # noqa: E402
from hwmodel.simulate import TensorArg, declare, simulate  # noqa: E402
from hwmodel.spec import load_machine  # noqa: E402
from hwmodel.timing import simulate_timing  # noqa: E402
from strategies.library import kernel_path  # noqa: E402

import speed_report  # noqa: E402

TARGETS = {"timing_only_4096_s": 0.3, "numeric_1024_s": 5.0}
H100_HGEMM_KNOBS = dict(BM=128, BN=256, BK1=128, BK=32, DRAIN_ROWS=32, GROUP=8)   # benchmarks/h100_crosscheck.py


def gemm_args(n: int, dtype: str) -> list[TensorArg]:
    return [TensorArg("a", (n, n), dtype), TensorArg("b", (n, n), dtype), TensorArg("c", (n, n), "fp32", "output")]


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def run(repeats: int) -> dict:
    machine = load_machine("ascend-910a")
    sgemm = load_kernel(kernel_path("sgemm_cube"))
    hgemm = load_kernel(kernel_path("hgemm_cube"))
    big = gemm_args(4096, "fp32")
    trace = record_trace(sgemm, machine, declare(big))
    started = time.perf_counter()
    simulate_timing(trace, machine)
    first_call = time.perf_counter() - started
    h100 = load_machine("h100")
    hgemm_h100 = record_trace(load_kernel(kernel_path("hgemm_cube"), **H100_HGEMM_KNOBS), h100,
                              declare(gemm_args(4096, "fp16")))
    attention = record_trace(load_kernel(kernel_path("attention_flash")), machine,
                             declare(get_task("attention").args(get_task("attention").bench_shape)))
    rng = np.random.default_rng(0)
    data = {"a": rng.uniform(-1, 1, (1024, 1024)).astype(np.float32),
            "b": rng.uniform(-1, 1, (1024, 1024)).astype(np.float32)}
    figures = {
        "timing_only_4096_s": median_seconds(lambda: simulate(sgemm, machine, big), repeats),
        "record_4096_s": median_seconds(lambda: record_trace(sgemm, machine, declare(big)), repeats),
        "timing_engine_4096_s": median_seconds(lambda: simulate_timing(trace, machine), repeats),
        "ops_4096": trace.num_ops,
        "timing_first_call_s": first_call,
        "hgemm_h100_timing_engine_4096_s": median_seconds(lambda: simulate_timing(hgemm_h100, h100), repeats),
        "attention_timing_engine_bench_s": median_seconds(lambda: simulate_timing(attention, machine), repeats),
        "hgemm_timing_only_4096_s": median_seconds(lambda: simulate(hgemm, machine, gemm_args(4096, "fp16")), repeats),
        "numeric_1024_s": median_seconds(lambda: simulate(sgemm, machine, gemm_args(1024, "fp32"), data), repeats),
        "sampled_numeric_4096_s": median_seconds(
            lambda: simulate(sgemm, machine, big, {k: np.resize(v, (4096, 4096)) for k, v in data.items()},
                             sample_cores=[0]), 1),
    }
    figures["us_per_op"] = 1e6 * figures["timing_only_4096_s"] / figures["ops_4096"]
    return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in figures.items()}


if __name__ == "__main__":
    speed_report.main(__doc__, "Simulator speed (ascend-910a, SGEMM-cube double-buffered unless named)", run, TARGETS, repeats=3)

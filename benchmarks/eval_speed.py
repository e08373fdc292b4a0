"""Speed of the evaluation cascade: fixed overhead, a full 4096^3 evaluation, a cache hit.

    python benchmarks/eval_speed.py [--json] [--repeats 5]

Targets (project's evaluator issue): cascade for a small candidate (policy, sandbox start
to result; 256^3 hgemm) <= 0.5 s median; full `sgemm` evaluation at 4096^3 on ascend-910a <= 5 s;
cache hit < 10 ms. Figures are medians of the repeats, measured side by side.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from evaluator.cascade import EvalCache, EvalConfig, evaluate  # noqa: E402
from evaluator.sandbox import SandboxLimits, record_in_sandbox  # noqa: E402
from evaluator.tasks import get_task  # noqa: E402
from hwmodel.spec import load_machine  # noqa: E402
from strategies.library import kernel_path  # noqa: E402

import speed_report  # noqa: E402

TARGETS = {"small_candidate_cascade_s": 0.5, "full_sgemm_4096_s": 5.0, "cache_hit_ms": 10.0}


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def run(repeats: int) -> dict:
    machine = load_machine("ascend-910a")
    sgemm, hgemm = get_task("sgemm"), get_task("hgemm")
    small_src = kernel_path("hgemm_cube").read_text()
    sgemm_src = kernel_path("sgemm_cube").read_text()
    tiny = {"64x64x64": hgemm.args((64, 64, 64))}
    roundtrip = [timed(lambda: record_in_sandbox(small_src, machine, list(hgemm.arg_names), tiny, SandboxLimits()))
                 for _ in range(repeats)]
    small = [timed(lambda: evaluate(small_src, hgemm, machine, (256, 256, 256))) for _ in range(repeats)]
    full = [timed(lambda: evaluate(sgemm_src, sgemm, machine, (4096, 4096, 4096))) for _ in range(max(1, repeats // 2))]
    cache = EvalCache()
    evaluate(small_src, hgemm, machine, (256, 256, 256), EvalConfig(), cache)
    hits = [timed(lambda: evaluate(small_src, hgemm, machine, (256, 256, 256), EvalConfig(), cache))
            for _ in range(repeats)]
    return {
        "sandbox_roundtrip_s": round(statistics.median(roundtrip), 3),
        "small_candidate_cascade_s": round(statistics.median(small), 3),
        "full_sgemm_4096_s": round(statistics.median(full), 3),
        "cache_hit_ms": round(1e3 * statistics.median(hits), 3),
    }


if __name__ == "__main__":
    speed_report.main(__doc__, "Evaluation cascade speed (ascend-910a)", run, TARGETS, repeats=5)

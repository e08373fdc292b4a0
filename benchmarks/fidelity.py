"""Fidelity of the simulator: hand-written kernels of the published recipes against the
published figures (SGEMM-cube on Ascend 910A, native FP16 GEMM on 910A and 910B).

    python benchmarks/fidelity.py [--json] [--sizes 4096,8192]

Timing-only runs (no data). The ranges are the acceptance bands from the project's
simulator issue; the published figures come from DESIGN.md and HARDWARE_FACTS.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodel.loader import load_kernel  # noqa: E402
from hwmodel.roofline import engine_peak_tflops  # noqa: E402
from hwmodel.simulate import TensorArg, simulate  # noqa: E402
from hwmodel.spec import load_machine  # noqa: E402
from strategies.library import kernel_path  # noqa: E402

# (label, library module, knobs, input dtype, engine, machine, published %, acceptance band)
CASES = [
    ("sgemm-cube double-buffered", "sgemm_cube", {"SLOTS": 2}, "fp32", "fp32_split", "ascend-910a", 77.0, (69, 85)),
    ("sgemm-cube single-buffered", "sgemm_cube", {"SLOTS": 1, "SPLIT_SLOTS": 1}, "fp32", "fp32_split", "ascend-910a", 49.0, (41, 57)),
    ("native fp16 cube", "hgemm_cube", {}, "fp16", "fp16", "ascend-910a", 84.0, (78, 90)),
    # the CANN basic-matmul tiling on A2 (HARDWARE_FACTS): L1 128x256x256, L0 128x256x64, ping-pong
    ("native fp16 cube", "hgemm_cube", {"BM": 128, "BN": 256, "BK1": 256, "BK": 64}, "fp16", "fp16", "ascend-910b",
     87.5, None),
]


def gemm_args(n: int, dtype: str) -> list[TensorArg]:
    return [TensorArg("a", (n, n), dtype), TensorArg("b", (n, n), dtype), TensorArg("c", (n, n), "fp32", "output")]


def run(sizes: list[int]) -> list[dict]:
    rows = []
    for label, module, knobs, dtype, engine, machine_name, published, band in CASES:
        machine = load_machine(machine_name)
        kernel = load_kernel(kernel_path(module), **knobs)
        peak = engine_peak_tflops(machine, engine)
        for n in sizes:
            started = time.perf_counter()
            result = simulate(kernel, machine, gemm_args(n, dtype))
            tflops = 2 * n ** 3 / result.timing.time_ns / 1e3
            pct = 100 * tflops / peak
            rows.append({
                "kernel": label, "machine": machine_name, "shape": f"{n}x{n}x{n}",
                "tflops": round(tflops, 2), "peak_tflops": round(peak, 1), "pct_of_peak": round(pct, 1),
                "published_pct": published, "band": list(band) if band else None,
                "in_band": (band[0] <= pct <= band[1]) if band else None,
                "busiest_pipe": "%s %.0f%%" % (lambda p: (p[0], 100 * p[1]))(result.timing.busiest_pipe),
                "l2_hit_rate": round(result.timing.l2_hit_rate, 3),
                "sim_seconds": round(time.perf_counter() - started, 2),
            })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument("--sizes", default="4096,8192", help="comma-separated square sizes (default 4096,8192)")
    args = parser.parse_args()
    rows = run([int(s) for s in args.sizes.split(",")])
    if args.json:
        print(json.dumps({"rows": rows}))
        return
    from rich.console import Console
    from rich.table import Table
    table = Table(title="Simulator fidelity against published figures")
    for col in ("kernel", "machine", "shape", "TFLOP/s", "% of peak", "published %", "band", "busiest pipe", "L2 hits", "sim s"):
        table.add_column(col, justify="left" if col in ("kernel", "machine", "shape", "busiest pipe") else "right")
    for r in rows:
        band = "-" if r["band"] is None else f"{r['band'][0]}-{r['band'][1]} {'ok' if r['in_band'] else 'MISS'}"
        table.add_row(r["kernel"], r["machine"], r["shape"], f"{r['tflops']:.1f}", f"{r['pct_of_peak']:.1f}",
                      f"{r['published_pct']:.0f}", band, r["busiest_pipe"], f"{r['l2_hit_rate']:.0%}", f"{r['sim_seconds']:.1f}")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()

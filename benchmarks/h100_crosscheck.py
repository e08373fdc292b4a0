"""Cross-check of the `h100` preset against a real H100: GEMM errors and time ratios, side by side.

    python benchmarks/h100_crosscheck.py [--json] [--quick] [--sample 256] [--seed 20240101]

Measured: benchmarks/data/h100_measured.json (benchmarks/gpu/measure_gemm_numerics.py on an
H100 80GB HBM3). Simulated: the library kernels on the `h100` preset. Methods and kernels:
fp16 = hgemm_cube (fp16 inputs); split3 / split3_chunk{64,256,1024} = sgemm_termwise with
CHUNK = 0 / 64 / 256 / 1024; int8 = qgemm_int8; fp32 = sgemm_vector (FP32 on the SIMT lanes).

Errors (relative Frobenius vs FP64 on the same FP32 inputs; uniform U[-1,1], normal N(0,1),
wide sign*2^e*U[1,2) with e in [-8,8], drawn from an explicit numpy Generator): an n x n x n
product is validated on a sample of its output elements. The kernels' arithmetic for output
(i, j) depends only on row i of A, column j of B and K (the K order is fixed by the kernel's
K steps and chunks, INT8 scales are per row of A / per column of B), so the kernel is run
on S sampled rows of A and S sampled columns of B with the full K = n (all cores replayed),
and compared with a[rows] @ b[:, cols] in FP64. This is what makes 8192 affordable: the
recorder costs ~6 us per op, and full 8192^3 traces of the chunked kernels have 10^7-10^8
ops. As a check of the method, the timing runs of fp16, split3 and int8 also replay one core
of the full n^3 product (simulate(..., sample_cores=[core])) on uniform inputs; its error is
shown beside the sampled-rows figure.

Times: timing-only at 8192^3 for fp16, split3 (whole K) and int8 (4096^3 with --quick); the
GPU ratios use `gemm_time_ms` (GEMM kernels only, on prepared operands), so the simulated
ones use the GEMM phase of the two-phase kernels (after the split/quantize phase and its
barrier, read off core 0's timeline); whole-kernel ratios are shown for information. The
rank-1-update FP32 kernel issues 3 ops per k per tile (2*10^8 at 8192^3), so it is timed at
2048^3 (1024^3 with --quick) and its rate stands for the large size (it is set by each core's
per-k loop of column loads and rank-1 updates, which does not depend on n; the tile waves are
97% full at 2048, 99% at 8192): the FP32 ratio is a ratio of rates.

Targets: simulated error within 2x of measured for fp16, split3 and split3_chunk* on every
distribution and size; simulated time ratios within 25% of the measured ones.
Absolute rates at 8192^3 (simulated / measured; issue 15: HBM and L2 are each one resource shared
by every transfer, and the h100 register file holds 128x256 FP16 accumulator tiles): FP16 816 /
705 TFLOP/s (741 and 769 in two other runs on the same kind of machine: DESIGN.md, the INT8
probe), split3 210 / 212, FP32 (2048^3 rate) 53 / 51, INT8 1218 / 917 TOPS. FP16 runs 6-16% fast:
the preset's clock (1.83 GHz, from the 989 TFLOP/s peak) and its L2 (10 TB/s, assumed) are
datasheet-level, while a real dense FP16 GEMM runs power-capped under 700 W (the runs' spread;
a one-off probe saw the INT8 GEMM at higher SM clocks than FP16). Before issue 15 the FP16 GEMM
reached 545 (each SM got a static 1/132 of L2, and its 128x128 tiles, the largest a 64 KiB L0C
held, needed more).
INT8 vs FP16 (within 25% since issue 15, ratio 0.87; 0.63 before): the GPU's torch._int_mm
(cuBLASLt IMMA, int32 out) reaches 917 TOPS = 46% of the INT8 peak, FP16 71% of its peak. The
INT8 probe (benchmarks/gpu/int8_probe.py; data/h100_int8_probe.json) found no faster INT8 kernel
on the machine: cuBLASLt with B column-major 770 / 825 TOPS at 4096 / 8192 (B row-major 123 /
129, an autotuned Triton kernel 246 / 283), FP16 721 / 769 TFLOP/s in the same run. A one-off
probe saw FP8 GEMMs (same tensor-core peak as INT8) at 1238 TFLOP/s, so the gap is the available
INT8 kernels' efficiency, not the hardware. The simulated INT8 kernel gets the full 2x of the
cube's INT8 mode; lowering the INT8 rate in the preset would be a per-kernel fudge.

Attention (information, no target): the library flash attention on the h100 preset at
1x8x4096x128 with knobs from its family's space that fit (UB 64 KiB holds S, P and O of at most
32 query rows at head dim 128), as % of the FP16 peak, beside the real-GPU figures quoted in
issue 15 (data/h100_attention_reference.json; not measured by this project).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hwmodel.loader import load_kernel  # noqa: E402
from hwmodel.simulate import SimResult, TensorArg, simulate  # noqa: E402
from hwmodel.spec import MachineSpec, load_machine  # noqa: E402
from strategies.library import kernel_path  # noqa: E402

MEASURED = Path(__file__).resolve().parent / "data" / "h100_measured.json"
ATTENTION_REFERENCE = Path(__file__).resolve().parent / "data" / "h100_attention_reference.json"
DISTRIBUTIONS = ("uniform", "normal", "wide")
ERROR_FACTOR = 2.0          # target: simulated error within 2x of measured
RATIO_TOLERANCE = 0.25      # target: simulated time ratio within 25% of measured
SAMPLE_CORE = 0             # the core replayed in the full-shape check (its timeline is read too)


@dataclass(frozen=True)
class Method:
    """A GPU method and the library kernel (with h100 knobs) that plays it on the simulator."""

    name: str
    module: str
    dtype: str                       # kernel input dtype (the fp16 method gets fp16-rounded inputs)
    knobs: dict = field(default_factory=dict)
    error_target: bool = True


# Knobs within the h100 capacities (L0C 128 KiB, L1 228 KiB, UB 64 KiB, L0A/L0B 32 KiB), each the
# fastest of a small sweep (GROUP = tile-row band of the swizzle). FP16: the 128x256 tile of Hopper
# GEMM libraries (792 TFLOP/s at 4096^3; 128x128 on the earlier 64 KiB L0C: 613). SPLIT3: BK 64
# (L0A holds a hi|lo pair of 64 x 2·BK fp16, two slots); at 4096^3 185.3 TFLOP/s, as BK 128 gave.
FP16 = Method("fp16", "hgemm_cube", "fp16", dict(BM=128, BN=256, BK1=128, BK=32, DRAIN_ROWS=32, GROUP=8))
SPLIT3 = Method("split3", "sgemm_termwise", "fp32",
                dict(CHUNK=0, BM=64, BN=128, BK1=128, BK=64, ACC_SLOTS=1, GROUP=4))
INT8 = Method("int8", "qgemm_int8", "fp32", dict(GROUP=16), error_target=False)
FP32 = Method("fp32", "sgemm_vector", "fp32", dict(BM=64, BN=128, SLOTS=8), error_target=False)
ERROR_METHODS = (FP16, SPLIT3, *(Method(f"split3_chunk{c}", "sgemm_termwise", "fp32", dict(CHUNK=c))
                                 for c in (64, 256, 1024)), INT8, FP32)


# --------------------------------------------------------------------------- inputs and measurements
def draw(rng: np.random.Generator, dist: str, shape: tuple[int, int]) -> np.ndarray:
    """FP32 values from the GPU script's distributions (measure_gemm_numerics.make_inputs)."""
    if dist == "uniform":
        return rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    if dist == "normal":
        return rng.standard_normal(shape, dtype=np.float32)
    if dist == "wide":
        sign = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
        exp = rng.integers(-8, 9, shape)
        return (sign * np.exp2(exp) * (rng.random(shape) + 1.0)).astype(np.float32)
    raise ValueError(f"unknown distribution {dist!r}")


def load_measured() -> dict[tuple[str, int, str], dict]:
    rows = json.loads(MEASURED.read_text())["rows"]
    return {(r["method"], r["n"], r["distribution"]): r for r in rows}


def rel_fro(c: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(c.astype(np.float64) - ref) / np.linalg.norm(ref))


def gemm_args(m: int, k: int, n: int, dtype: str) -> list[TensorArg]:
    return [TensorArg("a", (m, k), dtype), TensorArg("b", (k, n), dtype), TensorArg("c", (m, n), "fp32", "output")]


def kernel_of(method: Method):
    return load_kernel(kernel_path(method.module), **method.knobs)


def as_input(x: np.ndarray, method: Method) -> np.ndarray:
    return x.astype(np.float16) if method.dtype == "fp16" else x


# --------------------------------------------------------------------------- errors
def simulated_error(method: Method, machine: MachineSpec, n: int, dist: str, sample: int, seed: int) -> float:
    """Error of `sample` x `sample` output elements of an n^3 product (rows/columns sampled, full K)."""
    rng = np.random.default_rng([seed, n, DISTRIBUTIONS.index(dist)])
    s = min(sample, n)
    a_rows, b_cols = draw(rng, dist, (s, n)), draw(rng, dist, (n, s))
    res = simulate(kernel_of(method), machine, gemm_args(s, n, s, method.dtype),
                   data={"a": as_input(a_rows, method), "b": as_input(b_cols, method)})
    return rel_fro(res.outputs["c"], a_rows.astype(np.float64) @ b_cols.astype(np.float64))


def sampled_core_error(res: SimResult, a: np.ndarray, b: np.ndarray) -> float:
    """Error over the outputs the replayed core wrote (the rest stay NaN), FP64 reference per row block."""
    c = res.outputs["c"]
    done = ~np.isnan(c)
    diff2 = ref2 = 0.0
    for r0 in range(0, c.shape[0], 64):
        block = done[r0:r0 + 64]
        rows = np.flatnonzero(block.any(axis=1)) + r0
        if rows.size == 0:
            continue
        cols = np.flatnonzero(block.any(axis=0))
        ref = a[rows].astype(np.float64) @ b[:, cols].astype(np.float64)
        got = c[np.ix_(rows, cols)].astype(np.float64)
        mask = done[np.ix_(rows, cols)]
        diff2 += float(np.sum((got - ref)[mask] ** 2))
        ref2 += float(np.sum(ref[mask] ** 2))
    return (diff2 / ref2) ** 0.5


def error_rows(machine, measured, sizes, sample, seed, checks) -> list[dict]:
    rows = []
    for method in ERROR_METHODS:
        for n in sizes:
            for dist in DISTRIBUTIONS:
                sim = simulated_error(method, machine, n, dist, sample, seed)
                meas = measured[(method.name, n, dist)]["rel_fro_error"]
                ratio = sim / meas
                rows.append({
                    "method": method.name, "n": n, "distribution": dist, "measured": meas, "simulated": sim,
                    "ratio": ratio, "target": f"within {ERROR_FACTOR:g}x" if method.error_target else None,
                    "within_target": (1 / ERROR_FACTOR <= ratio <= ERROR_FACTOR) if method.error_target else None,
                    "full_shape_check": checks.get((method.name, n, dist)),
                })
    return rows


def growth_rows(errors: list[dict], sizes: list[int]) -> list[dict]:
    """How the whole-K split3 error grows with K (= n), measured and simulated, relative to the smallest n."""
    by = {(r["method"], r["n"], r["distribution"]): r for r in errors}
    out = []
    for dist in DISTRIBUTIONS:
        base = by[("split3", sizes[0], dist)]
        for n in sizes[1:]:
            r = by[("split3", n, dist)]
            out.append({"method": "split3", "distribution": dist, "n": n, "relative_to_n": sizes[0],
                        "measured_growth": r["measured"] / base["measured"],
                        "simulated_growth": r["simulated"] / base["simulated"]})
    return out


# --------------------------------------------------------------------------- times
def gemm_phase_ns(res: SimResult, machine: MachineSpec, core: int) -> float:
    """Time from the release of the kernel's last barrier to the end (the whole time if none)."""
    ops = res.trace.ops[core]
    barriers = [i for i, op in enumerate(ops) if op.kind == "barrier"]
    if not barriers:
        return res.timing.time_ns
    release = min(start for i, _, start, _ in res.timing.timeline if i > barriers[-1]) - machine.issue_cycles
    return machine.ns(res.timing.cycles - release)


def timed(method: Method, machine: MachineSpec, n: int, seed: int, check: bool) -> dict:
    """Timing run at n^3; with `check`, uniform inputs and one replayed core (full-shape error)."""
    started = time.perf_counter()
    data = a = b = None
    if check:
        rng = np.random.default_rng([seed, n, 99])
        a, b = draw(rng, "uniform", (n, n)), draw(rng, "uniform", (n, n))
        data = {"a": as_input(a, method), "b": as_input(b, method)}
    res = simulate(kernel_of(method), machine, gemm_args(n, n, n, method.dtype), data=data,
                   sample_cores=[SAMPLE_CORE] if check else None, timeline_core=SAMPLE_CORE)
    out = {"method": method.name, "n": n, "time_ns": res.timing.time_ns,
           "gemm_ns": gemm_phase_ns(res, machine, SAMPLE_CORE), "ops": res.trace.num_ops,
           "busiest_pipe": res.timing.busiest_pipe[0], "sim_seconds": 0.0,
           "check_error": sampled_core_error(res, a, b) if check else None}
    out["sim_seconds"] = time.perf_counter() - started
    return out


def ratio_rows(machine, measured, n, n_fp32, seed) -> tuple[list[dict], dict]:
    runs = {m.name: timed(m, machine, n, seed, check=True) for m in (FP16, SPLIT3, INT8)}
    runs["fp32"] = timed(FP32, machine, n_fp32, seed, check=False)
    flops = {name: 2 * r["n"] ** 3 for name, r in runs.items()}
    rate = {name: flops[name] / r["gemm_ns"] for name, r in runs.items()}          # GFLOP/s of the GEMM phase
    rate_whole = {name: flops[name] / r["time_ns"] for name, r in runs.items()}
    rows = []
    for name in ("split3", "fp32", "int8"):
        mg = measured[(name, n, "uniform")]
        m16 = measured[("fp16", n, "uniform")]
        meas = mg["gemm_time_ms"] / m16["gemm_time_ms"]
        sim = rate["fp16"] / rate[name]
        ratio = sim / meas
        rows.append({
            "pair": f"{name} / fp16", "n": n, "measured": meas, "simulated": sim, "ratio": ratio,
            "target": f"within {RATIO_TOLERANCE:.0%}",
            "within_target": abs(ratio - 1) <= RATIO_TOLERANCE,
            "measured_timing": "gemm_time_ms (GEMM kernels only, prepared operands)",
            "simulated_timing": ("GEMM phase after the barrier" if name in ("split3", "int8") else "whole kernel")
            + (f"; rate at {runs[name]['n']}^3" if runs[name]["n"] != n else ""),
            "measured_whole": mg["time_ms"] / m16["time_ms"],
            "simulated_whole": rate_whole["fp16"] / rate_whole[name],
        })
    tflops = {name: rate[name] / 1e3 for name in runs}
    return rows, {"runs": runs, "gemm_tflops": tflops}


# --------------------------------------------------------------------------- attention
# The library flash attention with knobs from its family's space that fit the h100 preset at
# head dim 128 (UB is 64 KiB: the kernel keeps S and O in L0C and again in UB, so the query tile
# is 16 rows double-buffered or 32 single-buffered; FA2 on Hopper uses 128), and the
# meta-kernel that picks its own tiles from the capacities.
ATTENTION_KERNELS = (("attention_flash", dict(BQ=32, BKV=64, SLOTS=1)),
                     ("attention_flash", dict(BQ=16, BKV=128, KV_STEP=32, SLOTS=2)), ("attention_xyserve", {}))


def attention_rows(machine: MachineSpec, shape: tuple[int, int, int, int]) -> list[dict]:
    """% of the FP16 peak (the roofline limit: the shape is compute-bound) of each attention kernel."""
    from hwmodel.roofline import engine_peak_tflops
    b, h, s, d = shape
    args = [TensorArg(n, shape, "fp16") for n in ("q", "key", "v")] + [TensorArg("o", shape, "fp16", "output")]
    rows = []
    for module, knobs in ATTENTION_KERNELS:
        started = time.perf_counter()
        res = simulate(load_kernel(kernel_path(module), **knobs), machine, args)
        tflops = 4.0 * b * h * s * s * d / res.timing.time_ns / 1e3
        rows.append({"kernel": module, "knobs": knobs, "shape": "x".join(map(str, shape)), "tflops": tflops,
                     "pct_of_peak": 100 * tflops / engine_peak_tflops(machine, "fp16"),
                     "busiest_pipe": res.timing.busiest_pipe[0], "l2_hit_rate": res.timing.l2_hit_rate,
                     "sim_seconds": time.perf_counter() - started})
    return rows


def print_attention(console, rows: list[dict]) -> None:
    from rich.table import Table
    ref = json.loads(ATTENTION_REFERENCE.read_text())
    table = Table(title="Attention on the h100 preset, % of the dense FP16 peak (real H100: "
                        + "; ".join(f"{r['kernel']} {r['pct_of_fp16_peak'][0]}-{r['pct_of_fp16_peak'][1]}%"
                                    for r in ref["rows"]) + ", as quoted in issue 15, not measured here)")
    for col in ("kernel", "knobs", "shape", "TFLOP/s", "% of peak", "busiest pipe", "L2 hits", "sim s"):
        table.add_column(col, justify="left" if col in ("kernel", "knobs", "shape", "busiest pipe") else "right")
    for r in rows:
        table.add_row(r["kernel"], " ".join(f"{k}={v}" for k, v in r["knobs"].items()) or "auto", r["shape"],
                      f"{r['tflops']:.0f}", f"{r['pct_of_peak']:.1f}", r["busiest_pipe"], f"{r['l2_hit_rate']:.0%}",
                      f"{r['sim_seconds']:.0f}")
    console.print(table)


# --------------------------------------------------------------------------- output
def fmt_ok(flag) -> str:
    return "" if flag is None else ("ok" if flag else "MISS")


def print_errors(console, errors: list[dict]) -> None:
    from rich.table import Table
    table = Table(title="Relative Frobenius error: measured on the H100 | simulated on the h100 preset "
                        "(sim/meas; target within 2x for fp16 and split3*)")
    table.add_column("method")
    table.add_column("n", justify="right")
    for dist in DISTRIBUTIONS:
        for col in ("meas", "sim", "sim/meas"):
            table.add_column(f"{dist} {col}", justify="right")
    table.add_column("full-shape core check (uniform)", justify="right")
    keyed = {(r["method"], r["n"], r["distribution"]): r for r in errors}
    for method in dict.fromkeys(r["method"] for r in errors):
        for n in dict.fromkeys(r["n"] for r in errors):
            cells = []
            for dist in DISTRIBUTIONS:
                r = keyed[(method, n, dist)]
                cells += [f"{r['measured']:.3e}", f"{r['simulated']:.3e}",
                          f"{r['ratio']:.2f} {fmt_ok(r['within_target'])}"]
            check = keyed[(method, n, "uniform")]["full_shape_check"]
            table.add_row(method, str(n), *cells, "-" if check is None else f"{check:.3e}")
    console.print(table)


def print_growth(console, rows: list[dict]) -> None:
    from rich.table import Table
    growth = Table(title="split3 (whole K) error growth with K, relative to the smallest n")
    for col in ("distribution", "n", "measured growth", "simulated growth"):
        growth.add_column(col, justify="right")
    for g in rows:
        growth.add_row(g["distribution"], str(g["n"]), f"{g['measured_growth']:.2f}x", f"{g['simulated_growth']:.2f}x")
    console.print(growth)


def print_tables(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table
    console = Console(width=190)
    print_errors(console, result["errors"])
    if result["growth"]:
        print_growth(console, result["growth"])
    ratios = Table(title="Time ratios vs FP16 (measured: gemm_time_ms; simulated: GEMM phase; target within 25%)")
    for col in ("pair", "n", "measured", "simulated", "sim/meas", "target", "simulated timing",
                "measured whole", "simulated whole"):
        ratios.add_column(col, justify="left" if col in ("pair", "simulated timing") else "right")
    for r in result["ratios"]:
        ratios.add_row(r["pair"], str(r["n"]), f"{r['measured']:.2f}", f"{r['simulated']:.2f}",
                       f"{r['ratio']:.2f}", fmt_ok(r["within_target"]), r["simulated_timing"],
                       f"{r['measured_whole']:.2f}", f"{r['simulated_whole']:.2f}")
    console.print(ratios)
    if result.get("attention"):
        print_attention(console, result["attention"])
    s = result["settings"]
    runs = ", ".join(f"{k} {v['n']}^3 {s['gemm_tflops'][k]:.0f} T(FL)OP/s ({v['busiest_pipe']}-bound"
                     + ("" if v["check_error"] is None else f", core {SAMPLE_CORE} error {v['check_error']:.2e}")
                     + f", {v['sim_seconds']:.0f} s)" for k, v in s["runs"].items())
    console.print(f"Simulated GEMM-phase rates: {runs}.")
    met = [r["within_target"] for r in result["errors"] + result["ratios"] if r["within_target"] is not None]
    console.print(f"Targets met: {sum(met)}/{len(met)}. Sampled rows/columns per side: {s['sample']}; "
                  f"seed {s['seed']}; total {s['seconds']:.0f} s.")
    if any(r["within_target"] is False for r in result["ratios"] if r["pair"].startswith("int8")):
        console.print("INT8 / FP16 is a known miss: at 8192^3 the GPU's INT8 GEMM runs at 46% of the INT8 peak "
                      "(FP16 at 71%), a library-kernel effect the preset does not model (see this script's docstring).")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--quick", action="store_true",
                        help="errors at n = 1024 only, times at 4096^3 (FP32 rate at 1024^3)")
    parser.add_argument("--sample", type=int, default=256, help="sampled rows of A and columns of B (default 256)")
    parser.add_argument("--seed", type=int, default=20240101)
    args = parser.parse_args()
    started = time.perf_counter()
    machine = load_machine("h100")
    measured = load_measured()
    sizes = [1024] if args.quick else [1024, 4096, 8192]
    n_time, n_fp32 = (4096, 1024) if args.quick else (8192, 2048)
    ratios, timing = ratio_rows(machine, measured, n_time, n_fp32, args.seed)
    checks = {(name, run["n"], "uniform"): run["check_error"] for name, run in timing["runs"].items()
              if run["check_error"] is not None}
    errors = error_rows(machine, measured, sizes, args.sample, args.seed, checks)
    attention = attention_rows(machine, (1, 8, 1024 if args.quick else 4096, 128))
    result = {
        "errors": errors, "ratios": ratios, "attention": attention,
        "growth": growth_rows(errors, sizes) if len(sizes) > 1 else [],
        "settings": {"machine": machine.name, "error_sizes": sizes, "time_size": n_time, "fp32_time_size": n_fp32,
                     "sample": args.sample, "seed": args.seed, "measured": str(MEASURED.name),
                     "knobs": {m.name: m.knobs for m in ERROR_METHODS},
                     "runs": timing["runs"], "gemm_tflops": timing["gemm_tflops"],
                     "seconds": time.perf_counter() - started},
    }
    if args.json:
        print(json.dumps(result))
    else:
        print_tables(result)


if __name__ == "__main__":
    main()

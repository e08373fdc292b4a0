"""Measure the accuracy and speed of GEMM methods on a CUDA GPU (square n x n x n).

Methods: FP16 tensor-core GEMM with FP32 output, FP32 emulated by a 3-term FP16
split (whole K, or K in chunks summed in FP32), INT8 GEMM with per-row/column
scales, and plain FP32 SGEMM (TF32 off). Each is compared against an FP64 GEMM of
the same FP32 inputs (relative Frobenius error) and timed with CUDA events.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import statistics
import subprocess
import time
from dataclasses import dataclass
from typing import Callable

import torch

SCRIPT_VERSION = "1.0"
SHIFT = 11  # lo part is scaled by 2^SHIFT before rounding to fp16
DISTRIBUTIONS = ("uniform", "normal", "wide")
SCALED = "uniform_x1e-4"  # U[-1,1] * 1e-4: the split's lo part underflows fp16 without the shift
TIMED_DISTRIBUTION = "uniform"


# --------------------------------------------------------------------------- inputs

def make_inputs(dist: str, n: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Two n x n FP32 matrices drawn from `dist`, reproducible from `seed`."""
    gen = torch.Generator(device=device).manual_seed(seed)

    def draw() -> torch.Tensor:
        if dist == "uniform":
            return torch.rand(n, n, generator=gen, device=device) * 2 - 1
        if dist == "normal":
            return torch.randn(n, n, generator=gen, device=device)
        if dist == "wide":
            # sign * 2^e * m, e integer uniform in [-8, 8], m ~ U[1, 2): magnitudes in [2^-8, 2^9)
            sign = torch.where(torch.rand(n, n, generator=gen, device=device) < 0.5, -1.0, 1.0)
            exp = torch.randint(-8, 9, (n, n), generator=gen, device=device).float()
            mant = torch.rand(n, n, generator=gen, device=device) + 1
            return sign * torch.exp2(exp) * mant
        if dist == SCALED:
            return (torch.rand(n, n, generator=gen, device=device) * 2 - 1) * 1e-4
        raise ValueError(f"unknown distribution {dist!r}")

    return draw(), draw()


# --------------------------------------------------------------------------- GEMM building blocks

def mm_f16_f32(a16: torch.Tensor, b16: torch.Tensor) -> torch.Tensor:
    """FP16 x FP16 -> FP32 on tensor cores with FP32 accumulation.

    On CUDA this is torch.mm(..., out_dtype=torch.float32) (PyTorch >= 2.8), i.e.
    cublasGemmEx with FP16 A/B, FP32 C and CUBLAS_COMPUTE_32F. The CPU branch only
    exists for smoke tests: fp16 products are exact in fp32, so it is equivalent up
    to summation order.
    """
    if a16.is_cuda:
        return torch.mm(a16, b16, out_dtype=torch.float32)
    return a16.float() @ b16.float()


def split_fp16(x: torch.Tensor, shift: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x ~= hi + lo * 2^-shift with hi = fp16(x), lo = fp16((x - hi) * 2^shift)."""
    hi = x.half()
    lo = ((x - hi.float()) * 2.0**shift).half()
    return hi, lo


def split3_products(ah, al, bh, bl, shift: int) -> torch.Tensor:
    """hi.hi + (hi.lo + lo.hi) * 2^-shift: three tensor-core GEMMs, combined in FP32."""
    c = mm_f16_f32(ah, bh)
    cross = mm_f16_f32(ah, bl)
    cross += mm_f16_f32(al, bh)
    c.add_(cross, alpha=2.0**-shift)  # power-of-two scale: exact, then one FP32 add
    return c


def k_slices(k: int, chunk: int | None) -> list[slice]:
    chunk = chunk or k
    return [slice(k0, min(k0 + chunk, k)) for k0 in range(0, k, chunk)]


def split3_gemm(a, b, chunk: int | None = None, shift: int = SHIFT) -> torch.Tensor:
    """FP32 GEMM emulated with FP16 splits; K in chunks whose results are summed in FP32."""
    ah, al = split_fp16(a, shift)
    bh, bl = split_fp16(b, shift)
    c = None
    for ks in k_slices(a.shape[1], chunk):
        part = split3_products(ah[:, ks], al[:, ks], bh[ks], bl[ks], shift)
        c = part if c is None else c.add_(part)  # ordinary FP32 add, round-to-nearest
    return c


def quantize_rows_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row INT8: q = round(x / s), s = absmax(row) / 127."""
    scale = x.abs().amax(dim=1, keepdim=True) / 127
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    q = torch.round(x / scale).clamp_(-127, 127).to(torch.int8).contiguous()
    return q, scale


def int8_quantize(a, b):
    """A per row, B per column. B is returned column-major (the 'TN' layout cuBLAS likes)."""
    qa, sa = quantize_rows_int8(a)
    qbt, sb = quantize_rows_int8(b.t())  # rows of B^T are the columns of B
    return qa, sa, qbt.t(), sb.t()


def int_mm(qa: torch.Tensor, qb: torch.Tensor) -> torch.Tensor:
    """INT8 x INT8 -> INT32 (torch._int_mm: cuBLASLt IMMA on CUDA)."""
    return torch._int_mm(qa, qb)


def int8_gemm(a, b) -> torch.Tensor:
    qa, sa, qb, sb = int8_quantize(a, b)
    return int_mm(qa, qb).float() * sa * sb


# --------------------------------------------------------------------------- methods

@dataclass
class Method:
    name: str
    description: str
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # FP32 in -> FP32 out, whole method
    # Given the FP32 inputs, prepare operands and return a callable doing only the
    # tensor-core / BLAS GEMM kernels of the method (None: not separately timed).
    gemm_only: Callable[[torch.Tensor, torch.Tensor], Callable[[], object]] | None
    distributions: tuple[str, ...]
    unit: str = "TFLOP/s"
    shift: int | None = None  # for split methods: check the split parts


def fp16_gemm_only(a, b):
    a16, b16 = a.half(), b.half()
    return lambda: mm_f16_f32(a16, b16)


def split3_gemm_only(chunk: int | None, shift: int = SHIFT):
    def prepare(a, b):
        ah, al = split_fp16(a, shift)
        bh, bl = split_fp16(b, shift)
        slices = k_slices(a.shape[1], chunk)

        def gemms():
            for ks in slices:
                mm_f16_f32(ah[:, ks], bh[ks])
                mm_f16_f32(ah[:, ks], bl[ks])
                mm_f16_f32(al[:, ks], bh[ks])
        return gemms
    return prepare


def int8_gemm_only(a, b):
    qa, _, qb, _ = int8_quantize(a, b)
    return lambda: int_mm(qa, qb)


def build_methods(chunks: list[int]) -> list[Method]:
    all_dists = DISTRIBUTIONS + (SCALED,)
    methods = [
        Method("fp16", "inputs rounded to fp16; torch.mm(a16, b16, out_dtype=float32): "
               "tensor-core GEMM, FP32 accumulate and output",
               lambda a, b: mm_f16_f32(a.half(), b.half()), fp16_gemm_only, all_dists),
        Method("split3", f"hi=fp16(x), lo=fp16((x-hi)*2^{SHIFT}); hi.hi + (hi.lo + lo.hi)*2^-{SHIFT}, "
               "3 fp16 tensor-core GEMMs (FP32 out) over the whole K, lo.lo dropped",
               lambda a, b: split3_gemm(a, b), split3_gemm_only(None), all_dists, shift=SHIFT),
    ]
    for c in chunks:
        methods.append(Method(
            f"split3_chunk{c}", f"split3 per K-chunk of {c}; chunk results summed with FP32 adds "
            "outside the tensor core", lambda a, b, c=c: split3_gemm(a, b, chunk=c),
            split3_gemm_only(c), DISTRIBUTIONS, shift=SHIFT))
    methods += [
        Method("split3_shift0", "split3 with shift 0: lo=fp16(x-hi) (underflows for small x)",
               lambda a, b: split3_gemm(a, b, shift=0), split3_gemm_only(None, shift=0), (SCALED,),
               shift=0),
        Method("int8", "symmetric INT8, per-row scales for A, per-column for B (absmax/127, "
               "round-to-nearest); torch._int_mm int32 accumulate; dequantized to FP32",
               int8_gemm, int8_gemm_only, DISTRIBUTIONS, unit="TOPS"),
        Method("fp32", "torch.mm on FP32 tensors with TF32 disabled (SIMT SGEMM)",
               lambda a, b: torch.mm(a, b), lambda a, b: (lambda: torch.mm(a, b)), all_dists),
    ]
    return methods


# --------------------------------------------------------------------------- measuring

def median_ms(fn: Callable[[], object], warmup: int, repeats: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    if device == "cuda":
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
    else:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def rel_fro_error(c: torch.Tensor, ref: torch.Tensor, ref_norm: float) -> float:
    return torch.linalg.vector_norm(c.double().sub_(ref)).item() / ref_norm


def split_diagnostics(a: torch.Tensor, b: torch.Tensor, shift: int) -> dict:
    """Are the fp16 parts of A and B finite, and how often is a nonzero residual lost (lo == 0)?"""
    finite, lost, resid = True, 0, 0
    for x in (a, b):
        hi, lo = split_fp16(x, shift)
        resid_nonzero = (x - hi.float()) != 0
        finite &= bool(torch.isfinite(hi).all() and torch.isfinite(lo).all())
        lost += ((lo == 0) & resid_nonzero).sum().item()
        resid += resid_nonzero.sum().item()
    return {"split_parts_finite": finite, "lo_lost_fraction": lost / max(resid, 1)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(sizes, chunks, warmup, repeats, seed, device) -> list[dict]:
    methods = build_methods(chunks)
    rows = []
    for n in sizes:
        for di, dist in enumerate(DISTRIBUTIONS + (SCALED,)):
            a, b = make_inputs(dist, n, seed + 1000 * di + n, device)
            ref = torch.mm(a.double(), b.double())
            ref_norm = torch.linalg.vector_norm(ref).item()
            for m in methods:
                if dist not in m.distributions:
                    continue
                c = m.run(a, b)
                row = {"method": m.name, "n": n, "distribution": dist,
                       "rel_fro_error": rel_fro_error(c, ref, ref_norm),
                       "output_finite": bool(torch.isfinite(c).all())}
                del c
                if m.shift is not None:
                    row.update(split_diagnostics(a, b, m.shift))
                row.update(time_ms=None, tflops=None, gemm_time_ms=None, gemm_tflops=None,
                           unit=m.unit)
                if dist == TIMED_DISTRIBUTION:
                    flop = 2 * n**3
                    t = median_ms(lambda: m.run(a, b), warmup, repeats, device)
                    row.update(time_ms=t, tflops=flop / t / 1e9)
                    if m.gemm_only is not None:
                        gemms = m.gemm_only(a, b)
                        tg = median_ms(gemms, warmup, repeats, device)
                        row.update(gemm_time_ms=tg, gemm_tflops=flop / tg / 1e9)
                        del gemms
                sync(device)
                rows.append(row)
                print_row(row)
            del a, b, ref
            if device == "cuda":
                torch.cuda.empty_cache()
    return rows


# --------------------------------------------------------------------------- metadata / output

def cublas_version() -> dict | None:
    """cuBLAS version from the libcublas the process has loaded (Linux only)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libcublas.so" in line}
        if not paths:
            return None
        path = sorted(paths)[0]
        lib = ctypes.CDLL(path)
        parts = []
        for prop in (0, 1, 2):  # MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL
            v = ctypes.c_int()
            if lib.cublasGetProperty(prop, ctypes.byref(v)) != 0:
                return {"path": path, "version": None}
            parts.append(v.value)
        return {"path": path, "version": ".".join(map(str, parts))}
    except (OSError, AttributeError):
        return None


def nvidia_smi() -> dict | None:
    fields = "driver_version,name,clocks.max.sm,clocks.max.mem,power.limit"
    try:
        out = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    return dict(zip(fields.split(","), [v.strip() for v in out.splitlines()[0].split(",")]))


def metadata(device: str, args) -> dict:
    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "script": "benchmarks/gpu/measure_gemm_numerics.py",
        "script_version": SCRIPT_VERSION,
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "device_type": device,
        "seed": args.seed,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "error": "||C - C_ref||_F / ||C_ref||_F, C_ref = FP64 GEMM (on the same device) "
                 "of the same FP32 inputs",
        "timing": "CUDA events around each call, median over repeats after warm-up; "
                  f"only for distribution '{TIMED_DISTRIBUTION}'. time_ms: whole method from "
                  "FP32 inputs to FP32 output (casts, splitting, quantization, chunk sums, "
                  "dequantization); gemm_time_ms: only the GEMM kernels on prepared operands. "
                  "tflops = 2 n^3 / time (TOPS for int8)",
        "distributions": {
            "uniform": "U[-1, 1]",
            "normal": "N(0, 1)",
            "wide": "sign * 2^e * m, e uniform integer in [-8, 8], m ~ U[1, 2)",
            SCALED: "U[-1, 1] * 1e-4",
        },
        "matmul_flags": {
            "allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "allow_fp16_reduced_precision_reduction":
                torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
            "allow_fp16_accumulation":
                getattr(torch.backends.cuda.matmul, "allow_fp16_accumulation", None),
        },
        "methods": {m.name: m.description for m in build_methods(args.chunks)},
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        meta.update(
            device_name=torch.cuda.get_device_name(0),
            sm_count=props.multi_processor_count,
            compute_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            cublas=cublas_version(),
            preferred_blas_library=str(torch.backends.cuda.preferred_blas_library()),
            nvidia_smi=nvidia_smi(),
        )
    else:
        meta.update(device_name="cpu (smoke test only)")
    return meta


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def print_row(r: dict) -> None:
    print(f"{r['method']:>16} n={r['n']:>5} {r['distribution']:>13}  "
          f"err={r['rel_fro_error']:.3e}  time={fmt(r['time_ms'], '9.3f')} ms "
          f"{fmt(r['tflops'], '7.1f')} {r['unit']:<7}  "
          f"gemm-only {fmt(r['gemm_time_ms'], '9.3f')} ms {fmt(r['gemm_tflops'], '7.1f')}",
          flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1024,4096,8192",
                   help="comma-separated n for square M=N=K=n GEMMs")
    p.add_argument("--repeats", type=int, default=20, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--chunks", default="64,256,1024", help="K-chunk sizes for split3_chunk*")
    p.add_argument("--seed", type=int, default=20240101)
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"),
                   help="cpu only for smoke tests (timings and fp16 path not meaningful)")
    p.add_argument("--out", default="gemm_numerics.json", help="output JSON path")
    args = p.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.chunks = [int(s) for s in args.chunks.split(",")]

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("CUDA is not available (use --device cpu for a smoke test)")
    # Plain IEEE FP32 for the fp32 method; FP32 reductions for the fp16 GEMMs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    if hasattr(torch.backends.cuda.matmul, "allow_fp16_accumulation"):
        torch.backends.cuda.matmul.allow_fp16_accumulation = False

    rows = measure(args.sizes, args.chunks, args.warmup, args.repeats, args.seed, args.device)
    result = {"metadata": metadata(args.device, args), "rows": rows}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(json.dumps({k: v for k, v in result["metadata"].items() if k != "methods"}, indent=2))
    print(f"wrote {len(rows)} rows to {args.out}")


if __name__ == "__main__":
    main()

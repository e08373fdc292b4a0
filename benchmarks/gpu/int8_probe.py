"""How fast can this GPU run an INT8 GEMM? Compares INT8 GEMM implementations against
the FP16 tensor-core GEMM on the same n x n x n shape, so the INT8/FP16 time ratio used
by benchmarks/h100_crosscheck.py can be read against the best INT8 kernel available,
not only against one library call.

    python3 benchmarks/gpu/int8_probe.py --sizes 4096,8192 --out int8_probe.json

Implementations: torch._int_mm (cuBLASLt) with B column-major ("TN", the layout IMMA
wants) and row-major, and, when Triton is installed, a blocked Triton kernel with
int32 accumulation, autotuned over a few tile shapes (best of them reported). Every
result is checked exactly against a float64 reference (exact at these sizes) on a slice of the output.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
from datetime import datetime, timezone

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the probe still runs the cuBLAS variants
    triton = None


def median_ms(fn, warmup: int = 5, repeats: int = 20) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


if triton is not None:
    CONFIGS = [triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP": 8}, num_stages=s, num_warps=w)
               for bm, bn, bk, s, w in ((128, 256, 128, 3, 8), (256, 128, 128, 3, 8), (128, 128, 128, 4, 4),
                                        (128, 256, 64, 4, 8), (256, 256, 64, 3, 8))]

    @triton.autotune(configs=CONFIGS, key=["M", "N", "K"])
    @triton.jit
    def _int8_mm(a_ptr, b_ptr, c_ptr, M, N, K, sam, sak, sbk, sbn, scm, scn,
                 BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP: tl.constexpr):
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(N, BN)
        per_group = GROUP * tiles_n
        first_m = (pid // per_group) * GROUP
        group_rows = min(tiles_m - first_m, GROUP)
        pm = first_m + (pid % per_group) % group_rows
        pn = (pid % per_group) // group_rows
        rm = pm * BM + tl.arange(0, BM)
        rn = pn * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        a = a_ptr + rm[:, None] * sam + rk[None, :] * sak
        b = b_ptr + rk[:, None] * sbk + rn[None, :] * sbn
        acc = tl.zeros((BM, BN), dtype=tl.int32)
        for _ in range(0, tl.cdiv(K, BK)):
            acc += tl.dot(tl.load(a), tl.load(b), out_dtype=tl.int32)
            a += BK * sak
            b += BK * sbk
        tl.store(c_ptr + rm[:, None] * scm + rn[None, :] * scn, acc)

    def triton_int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        (M, K), N = a.shape, b.shape[1]
        c = torch.empty((M, N), dtype=torch.int32, device=a.device)
        grid = lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),)  # noqa: E731
        _int8_mm[grid](a, b, c, M, N, K, a.stride(0), a.stride(1), b.stride(0), b.stride(1),
                       c.stride(0), c.stride(1))
        return c


def probe(n: int) -> list[dict]:
    g = torch.Generator(device="cuda").manual_seed(n)
    qa = torch.randint(-127, 128, (n, n), dtype=torch.int8, device="cuda", generator=g)
    qb = torch.randint(-127, 128, (n, n), dtype=torch.int8, device="cuda", generator=g)
    qb_col = qb.t().contiguous().t()          # same values, column-major storage
    a16, b16 = qa.half(), qb.half()
    ref = (qa[:256].double() @ qb.double())   # exact (sums < 2**53) on the first 256 rows
    variants = {
        "fp16 torch.mm (fp32 out)": lambda: torch.mm(a16, b16, out_dtype=torch.float32),
        "int8 torch._int_mm, B col-major": lambda: torch._int_mm(qa, qb_col),
        "int8 torch._int_mm, B row-major": lambda: torch._int_mm(qa, qb),
    }
    if triton is not None:
        variants["int8 triton (autotuned)"] = lambda: triton_int8_mm(qa, qb)
    rows = []
    for name, fn in variants.items():
        try:
            out = fn()
            exact = None if name.startswith("fp16") else bool((out[:256].double() == ref).all())
            ms = median_ms(fn)
            rows.append({"n": n, "variant": name, "ms": ms, "tops": 2 * n ** 3 / ms / 1e9, "exact": exact})
        except Exception as exc:  # report, keep probing the others
            rows.append({"n": n, "variant": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="4096,8192")
    parser.add_argument("--out", default="int8_probe.json")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = [r for n in map(int, args.sizes.split(",")) for r in probe(n)]
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "device_name": torch.cuda.get_device_name(), "torch_version": torch.__version__,
            "cuda_version": torch.version.cuda, "triton_version": getattr(triton, "__version__", None),
            "python": platform.python_version()}
    with open(args.out, "w") as f:
        json.dump({"metadata": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()

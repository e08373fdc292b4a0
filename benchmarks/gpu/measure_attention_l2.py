"""Real-GPU figures for the h100 preset's cross-check: attention efficiency, the GEMM kernel
cuBLAS picks, and the chip's L2 and HBM read bandwidth.

    python3 benchmarks/gpu/measure_attention_l2.py --out h100_attention_l2.json

Attention: torch's scaled_dot_product_attention (FP16, [B, H, S, D]) with each backend
forced (FLASH_ATTENTION = FlashAttention-2, CUDNN_ATTENTION = cuDNN's fused kernel,
EFFICIENT_ATTENTION = the memory-efficient kernel); FLOPs 4·B·H·S²·D (half when causal),
% of the dense FP16 peak 989.4 TFLOP/s. GEMM: the names of the kernels the profiler sees for
torch.mm of FP16 8192^3 with FP32 output (the tile shape is in cuBLAS's kernel name).
Bandwidth: a Triton kernel whose programs each re-read their slice of a buffer with
L1-bypassing loads (.cg); a buffer far smaller than the 50 MB L2 is served by L2, a 2 GiB one
by HBM; bytes read / time. Times are medians of CUDA-event timings after warm-ups.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import traceback
from datetime import datetime, timezone

import torch

PEAK_FP16_TFLOPS = 989.4


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


def attention_rows() -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention as sdpa
    rows = []
    shapes = [(1, 8, 4096, 128), (16, 16, 4096, 128), (1, 2048, 64, 128)]
    backends = [("flash (FA2)", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for shape in shapes:
        b, h, s, d = shape
        q, k, v = (torch.randn(shape, device="cuda", dtype=torch.float16) for _ in range(3))
        for causal in (False, True):
            if causal and s < 1024:
                continue
            flops = 4.0 * b * h * s * s * d * (0.5 if causal else 1.0)
            for label, backend in backends:
                row = {"shape": "x".join(map(str, shape)), "causal": causal, "backend": label}
                try:
                    with sdpa_kernel([backend]):
                        ms = median_ms(lambda: sdpa(q, k, v, is_causal=causal))
                    row.update(ms=ms, tflops=flops / ms / 1e9, pct_of_fp16_peak=100 * flops / ms / 1e9 / PEAK_FP16_TFLOPS,
                               hbm_gbps=4 * b * h * s * d * 2 / ms / 1e6)
                except Exception as exc:  # a backend that does not support the shape is reported, not fatal
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
                rows.append(row)
                print(row, flush=True)
        del q, k, v
    return rows


def gemm_kernels() -> dict:
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.float16) for _ in range(2))
    fn = lambda: torch.mm(a, b, out_dtype=torch.float32)  # noqa: E731
    ms = median_ms(fn)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    names = sorted({e.key for e in prof.key_averages() if e.device_type.name == "CUDA"})
    out = {"n": n, "ms": ms, "tflops": 2 * n ** 3 / ms / 1e9, "kernels": names}
    print(out, flush=True)
    return out


def bandwidth_rows() -> list[dict]:
    import triton
    import triton.language as tl

    @triton.jit
    def reread(x_ptr, out_ptr, n_elem, reps, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        step = tl.num_programs(0) * BLOCK
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        for _ in range(reps):
            for start in range(pid * BLOCK, n_elem, step):
                acc += tl.load(x_ptr + start + tl.arange(0, BLOCK), cache_modifier=".cg")
        tl.store(out_ptr + pid * BLOCK + tl.arange(0, BLOCK), acc)

    sms = torch.cuda.get_device_properties(0).multi_processor_count
    block = 2048
    rows = []
    for mib, reps in ((4, 200), (8, 100), (16, 50), (24, 40), (2048, 1)):
        n_elem = mib * 2 ** 20 // 4
        x = torch.rand(n_elem, device="cuda", dtype=torch.float32)
        for per_sm in (4, 8):
            grid = sms * per_sm
            out = torch.empty(grid * block, device="cuda", dtype=torch.float32)
            ms = median_ms(lambda: reread[(grid,)](x, out, n_elem, reps, BLOCK=block, num_warps=8), warmup=3, repeats=10)
            row = {"buffer_mib": mib, "reps": reps, "programs": grid, "ms": ms,
                   "read_gbps": n_elem * 4 * reps / ms / 1e6, "served_by": "HBM" if mib > 50 else "L2"}
            rows.append(row)
            print(row, flush=True)
        del x
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="h100_attention_l2.json")
    args = parser.parse_args()
    props = torch.cuda.get_device_properties(0)
    result = {"metadata": {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device_name": props.name,
        "multiprocessors": props.multi_processor_count, "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda, "cudnn_version": torch.backends.cudnn.version(),
        "python": platform.python_version(), "peak_fp16_tflops": PEAK_FP16_TFLOPS}}
    for key, part in (("attention", attention_rows), ("gemm", gemm_kernels), ("bandwidth", bandwidth_rows)):
        try:
            result[key] = part()
        except Exception:
            result[key] = {"error": traceback.format_exc()[-2000:]}
            print(key, "failed:", result[key]["error"], flush=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()

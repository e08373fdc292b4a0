"""Roofline figures against hand-computed numbers for the Ascend 910A, and the feedback text."""
from __future__ import annotations

import pytest

from helpers import machine
from hwmodel.roofline import engine_peak_tflops, report, roofline
from hwmodel.timing import TimingResult

pytestmark = pytest.mark.unit

# Ascend 910A by hand: 32 cores x 16*16*16 MAC x 2 ops x 0.9765625 GHz = 256 TFLOP/s; HBM 1200 GB/s
PEAK_FP16 = 256.0
PEAK_SPLIT = 256.0 / 3
HBM_GBPS = 1200.0


def test_engine_peaks_910a():
    spec = machine("ascend-910a")
    assert engine_peak_tflops(spec, "fp16") == pytest.approx(PEAK_FP16)
    assert engine_peak_tflops(spec, "fp32_split") == pytest.approx(PEAK_SPLIT)
    assert engine_peak_tflops(spec, "int8") == pytest.approx(512.0)
    assert engine_peak_tflops(spec, "vector_fp32") == pytest.approx(2 * 64 * 32 * 0.9765625 / 1e3)   # 4 TFLOP/s
    with pytest.raises(ValueError, match="int4"):
        engine_peak_tflops(spec, "int4")                   # the 910A has no int4 mode


def test_compute_bound_fp32_gemm_4096():
    n = 4096
    flops = 2 * n ** 3                                     # 137,438,953,472
    nbytes = 3 * n * n * 4                                 # A, B, C in fp32: 201,326,592
    r = roofline(machine("ascend-910a"), flops, nbytes, "fp32_split")
    assert r.flops == 137_438_953_472 and r.compulsory_bytes == 201_326_592
    assert r.intensity == pytest.approx(2048 / 3)          # 2n / 12 = 682.67 FLOP/B
    assert r.ridge == pytest.approx(PEAK_SPLIT * 1e3 / HBM_GBPS)   # 71.11 FLOP/B
    assert r.ridge == pytest.approx(71.111, abs=1e-3)
    assert r.bound == "compute"
    assert r.limit_tflops == pytest.approx(PEAK_SPLIT)
    assert r.floor_ns == pytest.approx(137_438_953_472 / (PEAK_SPLIT * 1e3))   # 1.61 ms
    assert r.floor_ns == pytest.approx(1.6106e6, rel=1e-4)


def test_memory_bound_small_gemm():
    n = 64
    r = roofline(machine("ascend-910a"), 2 * n ** 3, 3 * n * n * 4, "fp32_split")
    assert r.intensity == pytest.approx(128 / 12)          # 10.67 FLOP/B, below the ridge
    assert r.bound == "memory"
    assert r.limit_tflops == pytest.approx(128 / 12 * HBM_GBPS / 1e3)   # 12.8 TFLOP/s
    assert r.floor_ns == pytest.approx(3 * n * n * 4 / HBM_GBPS)         # bytes / (GB/s) = ns


def test_ridge_point_is_where_roofs_meet():
    spec = machine("ascend-910a")
    ridge = PEAK_FP16 * 1e3 / HBM_GBPS
    at = roofline(spec, ridge * 1e6, 1e6, "fp16")
    below = roofline(spec, ridge * 0.99e6, 1e6, "fp16")
    assert at.bound == "compute" and below.bound == "memory"
    assert at.limit_tflops == pytest.approx(PEAK_FP16)
    assert below.limit_tflops == pytest.approx(0.99 * PEAK_FP16)


def fake_timing(time_ns: float, pipe_busy: dict[str, float], hits: int = 0, misses: int = 1) -> TimingResult:
    spec = machine("ascend-910a")
    return TimingResult(cycles=time_ns * spec.clock_ghz, time_ns=time_ns, core_time_ns=(time_ns,),
                        pipe_busy=pipe_busy, bytes_by_path={}, op_counts={}, l2_hit_bytes=hits,
                        hbm_bytes=misses, active_cores=1)


def test_report_numbers_and_text_name_the_busiest_pipe():
    n = 4096
    r = roofline(machine("ascend-910a"), 2 * n ** 3, 3 * n * n * 4, "fp32_split")
    busy = {"S": 0.1, "V": 0.2, "M": 0.6, "MTE1": 0.3, "MTE2": 0.9, "MTE3": 0.0}
    timing = fake_timing(2 * r.floor_ns, busy, hits=3, misses=1)  # half the limit
    rep = report(r, timing)
    assert rep.tflops == pytest.approx(PEAK_SPLIT / 2)
    assert rep.attained == pytest.approx(0.5)
    assert (rep.busiest_pipe, rep.busiest_fraction) == ("MTE2", 0.9)
    assert rep.l2_hit_rate == pytest.approx(0.75)
    text = rep.text()
    assert "MTE2-bound" in text and "busiest pipe MTE2 90%" in text
    assert "42.7 TFLOP/s" in text and "50% of the roofline limit 85.3 TFLOP/s" in text
    assert "compute-bound workload on the FP32-via-split" in text and "ridge 71" in text
    assert "Pipe busy: MTE2 90%, M 60%, MTE1 30%, V 20%, S 10%." in text   # busiest first, idle pipes left out
    assert "L2 hit rate 75%" in text


def test_report_text_for_a_cube_bound_kernel():
    r = roofline(machine("ascend-910a"), 2 * 1024 ** 3, 3 * 1024 ** 2 * 2, "fp16")
    text = report(r, fake_timing(r.floor_ns / 0.8, {"M": 0.95, "MTE2": 0.4})).text()
    assert "M-bound: busiest pipe M 95%" in text and "80% of the roofline limit" in text

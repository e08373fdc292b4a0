"""GEMM numerics through the whole simulator: library kernels and an inline INT8 kernel run
with data, compared with FP64 / int64 numpy references and with numpy's own FP32 error."""
from __future__ import annotations

from math import ceil

import numpy as np
import pytest

from helpers import gemm_args, library_kernel, machine, rel_fro_error
from hwmodel.simulate import simulate

pytestmark = pytest.mark.sim


@pytest.fixture(scope="module")
def uniform_512():
    rng = np.random.default_rng(512)
    a = rng.uniform(-1, 1, (512, 512)).astype(np.float32)
    b = rng.uniform(-1, 1, (512, 512)).astype(np.float32)
    return a, b


def run_sgemm(a, b, spec=None, sample_cores=None, **knobs):
    m, k = a.shape
    n = b.shape[1]
    return simulate(library_kernel("sgemm_cube", **knobs), spec or machine("ascend-910a"),
                    gemm_args(m, k, n, "fp32"), {"a": a, "b": b}, sample_cores=sample_cores)


def numpy_fp32_error(a, b, ref):
    return rel_fro_error(a @ b, ref)


# ---------------------------------------------------------------- split FP16 vs native FP16
def test_sgemm_cube_reaches_fp32_accuracy(uniform_512):
    a, b = uniform_512
    ref = a.astype(np.float64) @ b.astype(np.float64)
    result = run_sgemm(a, b)
    assert result.written["c"].all()
    err = rel_fro_error(result.outputs["c"], ref)
    assert err <= 2 * numpy_fp32_error(a, b, ref), err


def test_hgemm_cube_error_is_fp16_level(uniform_512):
    a, b = uniform_512
    ref = a.astype(np.float64) @ b.astype(np.float64)       # of the fp32 data, before rounding
    result = simulate(library_kernel("hgemm_cube"), machine("ascend-910a"), gemm_args(512, 512, 512, "fp16"),
                      {"a": a.astype(np.float16), "b": b.astype(np.float16)})
    assert result.written["c"].all()
    err = rel_fro_error(result.outputs["c"], ref)
    assert 1e-5 < err < 1e-3, err


@pytest.mark.parametrize("shift,fp32_level", [(0, False), (11, True)])
def test_sgemm_shift_matters_for_small_inputs(shift, fp32_level):
    """At 1e-4 scale the residual x - hi is ~5e-8: below fp16's smallest subnormal unless scaled."""
    rng = np.random.default_rng(7)
    a = (rng.uniform(-1, 1, (128, 256)) * 1e-4).astype(np.float32)
    b = (rng.uniform(-1, 1, (256, 256)) * 1e-4).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    err = rel_fro_error(run_sgemm(a, b, SHIFT=shift).outputs["c"], ref)
    if fp32_level:
        assert err < 2 * numpy_fp32_error(a, b, ref), err
    else:
        assert err > 1e-4, err


# ---------------------------------------------------------------- INT8 on the cube
I8_BM, I8_BN, I8_BK = 32, 32, 64


def int8_gemm(k, a, b, c):
    """GM int8 -> L1 (MTE2) -> L0A/L0B (MTE1) -> mma into int32 L0C -> UB (V) -> GM (MTE3)."""
    M, K = a.shape
    N = b.shape[1]
    a_l1 = k.alloc("L1", (I8_BM, K), "int8")
    b_l1 = k.alloc("L1", (K, I8_BN), "int8")
    a_l0 = k.alloc("L0A", (I8_BM, I8_BK), "int8")
    b_l0 = k.alloc("L0B", (I8_BK, I8_BN), "int8")
    acc = k.alloc("L0C", (I8_BM, I8_BN), "int32")
    out = k.alloc("UB", (I8_BM, I8_BN), "int32")
    for i, j in k.tiles((M, N), (I8_BM, I8_BN)):
        m, n = min(I8_BM, M - i), min(I8_BN, N - j)
        k.copy(a_l1[:m, :], a[i:i + m, :])
        k.copy(b_l1[:, :n], b[:, j:j + n])
        for kk in range(0, K, I8_BK):
            kl = min(I8_BK, K - kk)
            k.copy(a_l0[:m, :kl], a_l1[:m, kk:kk + kl])
            k.copy(b_l0[:kl, :n], b_l1[kk:kk + kl, :n])
            k.mma(acc[:m, :n], a_l0[:m, :kl], b_l0[:kl, :n], accumulate=kk > 0)
        k.copy(out[:m, :n], acc[:m, :n])
        k.copy(c[i:i + m, j:j + n], out[:m, :n])


def test_int8_mma_equals_exact_integer_product(rng):
    M, K, N = 96, 200, 80                                  # ragged N and K
    a = rng.integers(-128, 128, (M, K)).astype(np.int8)
    b = rng.integers(-128, 128, (K, N)).astype(np.int8)
    a[0, :], b[:, 0] = -128, -128                          # the extreme product, K times
    result = simulate(int8_gemm, machine("ascend-910a"), gemm_args(M, K, N, "int8", "int32"), {"a": a, "b": b})
    assert result.outputs["c"].dtype == np.int32
    assert result.written["c"].all()
    np.testing.assert_array_equal(result.outputs["c"].astype(np.int64), a.astype(np.int64) @ b.astype(np.int64))
    assert set(result.timing.bytes_by_path) == {"GM->L1", "L1->L0A", "L1->L0B", "L0C->UB", "UB->GM"}
    # every tile loads its A row-panel and B column-panel once
    assert result.timing.bytes_by_path["GM->L1"] == M * K * ceil(N / I8_BN) + K * N * ceil(M / I8_BM)


# ---------------------------------------------------------------- ragged shapes and coverage
def test_ragged_sgemm_is_correct_and_fully_written(rng):
    M, K, N = 200, 72, 136
    a = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (K, N)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    result = run_sgemm(a, b, BM=64, BN=64, BK=32)
    assert result.written["c"].all()
    c = result.outputs["c"]
    assert not np.isnan(c).any()
    assert rel_fro_error(c, ref) <= 2 * numpy_fp32_error(a, b, ref)


def test_ragged_hgemm_is_correct_and_fully_written(rng):
    M, K, N = 200, 72, 136
    a = rng.uniform(-1, 1, (M, K)).astype(np.float16)
    b = rng.uniform(-1, 1, (K, N)).astype(np.float16)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    result = simulate(library_kernel("hgemm_cube", BM=64, BN=64), machine("ascend-910a"),
                      gemm_args(M, K, N, "fp16"), {"a": a, "b": b})
    assert result.written["c"].all()
    c = result.outputs["c"].astype(np.float64)
    # exact fp16 products; one fp32 rounding per 16-wide group of K
    bound = -(-K // 16) * 2.0 ** -24 * (np.abs(a64) @ np.abs(b64))
    assert np.all(np.abs(c - a64 @ b64) <= bound)


def test_missing_tile_shows_in_written():
    """A kernel that skips the last tile leaves its elements unwritten (and NaN)."""
    base = library_kernel("hgemm_cube", BM=64, BN=64)

    class SkipLast:
        def __init__(self, k):
            self._k = k

        def __getattr__(self, name):
            return getattr(self._k, name)

        def tiles(self, shape, tile, **kw):
            return [t for t in self._k.tiles(shape, tile, **kw) if t != (128, 64)]

    def kernel(k, a, b, c):
        base(SkipLast(k), a, b, c)

    a = np.ones((192, 64), np.float16)
    b = np.ones((64, 128), np.float16)
    result = simulate(kernel, machine("ascend-910a"), gemm_args(192, 64, 128, "fp16"), {"a": a, "b": b})
    expected = np.ones((192, 128), bool)
    expected[128:192, 64:128] = False
    np.testing.assert_array_equal(result.written["c"], expected)
    assert np.isnan(result.outputs["c"][~expected]).all()
    assert (result.outputs["c"][expected] == 64).all()


# ---------------------------------------------------------------- sampled validation
def test_sampled_validation_computes_only_sampled_cores(rng):
    M, K, N, T = 512, 256, 512, 128                        # 4 x 4 tiles: core c owns tile c (row-major)
    a = rng.uniform(-1, 1, (M, K)).astype(np.float16)
    b = rng.uniform(-1, 1, (K, N)).astype(np.float16)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    result = simulate(library_kernel("hgemm_cube", BM=T, BN=T, GROUP=1), machine("ascend-910a"),
                      gemm_args(M, K, N, "fp16"), {"a": a, "b": b}, sample_cores=[0, 5])
    assert result.replayed_cores == (0, 5)
    assert result.written["c"].all()
    c = result.outputs["c"]
    computed = np.zeros((M, N), bool)
    for core in (0, 5):
        ti, tj = divmod(core, N // T)
        computed[ti * T:(ti + 1) * T, tj * T:(tj + 1) * T] = True
    assert np.isnan(c[~computed]).all()
    assert not np.isnan(c[computed]).any()
    np.testing.assert_allclose(c[computed], ref[computed], rtol=0, atol=1e-4)


def test_sampled_validation_runs_earlier_phases_on_every_core(rng):
    """sgemm_cube splits A and B on all cores before its barrier; a sampled core's tile needs
    every core's split, so it is only right if phase 1 ran everywhere."""
    M, K, N = 256, 512, 512                                # 2 x 2 tiles of 128 x 256
    a = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (K, N)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    result = run_sgemm(a, b, sample_cores=[3])
    assert result.written["c"].all()
    c = result.outputs["c"]
    tile = (slice(128, 256), slice(256, 512))             # core 3's tile
    assert np.isnan(c[:128]).all() and np.isnan(c[128:, :256]).all()
    assert rel_fro_error(c[tile], ref[tile]) < 2 * rel_fro_error((a @ b)[tile], ref[tile])


# ---------------------------------------------------------------- rounding of the accumulator
def test_h100_truncating_accumulation_costs_accuracy_on_long_k():
    h100 = machine("h100")
    assert h100.cube.accumulation == "rz"
    h100_rne = h100.model_copy(update={"cube": h100.cube.model_copy(update={"accumulation": "rne"})})
    rng = np.random.default_rng(4096)
    M, K, N = 64, 4096, 64
    a = rng.uniform(-1, 1, (M, K)).astype(np.float32)
    b = rng.uniform(-1, 1, (K, N)).astype(np.float32)
    ref = a.astype(np.float64) @ b.astype(np.float64)
    knobs = dict(BM=64, BN=64, BK1=128, SPLIT_ROWS=16, SPLIT_COLS=128)   # h100's smaller L1/L0C/UB
    err_rz = rel_fro_error(run_sgemm(a, b, spec=h100, **knobs).outputs["c"], ref)
    err_rne = rel_fro_error(run_sgemm(a, b, spec=h100_rne, **knobs).outputs["c"], ref)
    assert err_rne < 2 * numpy_fp32_error(a, b, ref), err_rne
    assert err_rz > 5 * err_rne, (err_rz, err_rne)

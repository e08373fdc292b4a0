"""hwmodel.numerics against exact rational references (tests/refs.py) and FP64/int64 numpy.

Rounding is checked bit for bit where the semantics are exact (casts, splits, one cube
group); accumulated cube error is checked against its a-priori bound and against numpy.
"""
from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from hwmodel import numerics
from refs import BF16, FP16, FP32, cube_reference, round_half_even_int, round_to

pytestmark = pytest.mark.unit

FP16_MIN_NORMAL = 2.0 ** -14
FP16_MAX = 65504.0


def fp16_normal_fp32():
    """Finite fp32 values whose magnitude is in the fp16 normal range."""
    mag = st.floats(FP16_MIN_NORMAL, FP16_MAX, width=32)
    return st.tuples(mag, st.booleans()).map(lambda t: -t[0] if t[1] else t[0])


# ---------------------------------------------------------------- split_fp16
@given(arrays(np.float32, st.integers(1, 64), elements=fp16_normal_fp32()))
def test_split_fp16_hi_is_rne_and_reconstruction_within_2_pow_minus_22(x):
    hi, lo = numerics.split_fp16(x, 11)
    assert hi.dtype == np.float16 and lo.dtype == np.float16
    for xi, h, l in zip(x.tolist(), hi.tolist(), lo.tolist()):
        assert h == round_to(xi, FP16), f"hi of {xi!r} is {h!r}, nearest-even fp16 is {round_to(xi, FP16)!r}"
        recon = h + l * 2.0 ** -11                     # exact in fp64: 11 + 11 bits, 2**-11 apart
        assert abs(recon - xi) <= 2.0 ** -22 * abs(xi), (xi, h, l, recon)


@given(arrays(np.float32, st.integers(1, 32), elements=fp16_normal_fp32()), st.integers(0, 13))
def test_split_fp16_lo_is_rne_of_scaled_residual(x, shift):
    hi, lo = numerics.split_fp16(x, shift)
    for xi, h, l in zip(x.tolist(), hi.tolist(), lo.tolist()):
        resid_scaled = (xi - h) * 2.0 ** shift         # x - hi is exact in fp64
        expected = round_to(resid_scaled, FP16)
        assert l == expected, (xi, shift, l, expected)
        if math.isinf(expected):                       # lo overflows: large x with a large shift
            continue
        # the error of the pair is the rounding error of lo, scaled back
        bound = 2.0 ** -11 * abs(xi - h) + 2.0 ** (-25 - shift)
        assert abs(h + l * 2.0 ** -shift - xi) <= bound


@given(arrays(np.float32, st.integers(1, 32), elements=st.floats(-2.0 ** 100, 2.0 ** 100, width=32)))
def test_split_bf16_halves_are_rne(x):
    hi, lo = numerics.split_fp16(x, 8, half="bf16")
    for xi, h, l in zip(x.tolist(), hi.astype(np.float64).tolist(), lo.astype(np.float64).tolist()):
        assert h == round_to(xi, BF16)
        assert l == round_to((xi - h) * 2.0 ** 8, BF16)


def test_split_fp16_gains_about_11_bits_over_plain_fp16(rng):
    x = rng.uniform(-1, 1, 10_000).astype(np.float32)
    hi, lo = numerics.split_fp16(x, 11)
    err_split = np.abs(hi.astype(np.float64) + lo.astype(np.float64) * 2.0 ** -11 - x)
    err_hi = np.abs(hi.astype(np.float64) - x)
    assert err_split.max() < err_hi.max() * 2.0 ** -9


# ---------------------------------------------------------------- cast
def near_ties(frac_bits: int):
    """Values a hair above or below a rounding tie of a format with `frac_bits` fraction bits."""
    return st.builds(
        lambda q, e, d, up, neg: (-1) ** neg * (q + 0.5 + (1 if up else -1) * 2.0 ** -d) * 2.0 ** (e - frac_bits),
        st.integers(2 ** frac_bits, 2 ** (frac_bits + 1) - 1), st.integers(-10, 10), st.integers(1, 40),
        st.booleans(), st.booleans())


@pytest.mark.parametrize("src_dtype", [np.float32, np.float64])
@pytest.mark.parametrize("fmt", [FP16, BF16])
@given(data=st.data())
def test_cast_float_is_round_to_nearest_even(src_dtype, fmt, data):
    width = 32 if src_dtype is np.float32 else 64
    x = data.draw(arrays(src_dtype, st.integers(1, 32), elements=st.one_of(
        st.floats(allow_nan=False, allow_infinity=True, width=width),
        near_ties(fmt.frac_bits).map(lambda v: float(np.float32(v)) if width == 32 else v))))
    out = numerics.cast(x, fmt.name).astype(np.float64)
    for xi, yi in zip(x.tolist(), out.tolist()):
        expected = round_to(xi, fmt)
        assert yi == expected or (math.isnan(yi) and math.isnan(expected)), \
            f"cast({xi!r}, {fmt.name}) = {yi!r}, nearest-even is {expected!r}"


@given(arrays(np.float64, st.integers(1, 32), elements=st.floats(allow_nan=False, width=64)))
def test_cast_fp64_to_fp32_is_rne(x):
    out = numerics.cast(x, "fp32")
    assert out.dtype == np.float32
    assert out.astype(np.float64).tolist() == [round_to(v, FP32) for v in x.tolist()]


@pytest.mark.parametrize("dtype,value,expected", [
    ("fp16", 1 + 2.0 ** -11, 1.0),                          # tie -> even (down)
    ("fp16", 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -9),             # tie -> even (up)
    ("fp16", 2049.0, 2048.0),
    ("fp16", 2051.0, 2052.0),
    ("fp16", 65519.0, 65504.0),                              # just below the overflow tie
    ("fp16", 65520.0, math.inf),                             # the tie overflows
    ("bf16", 1 + 2.0 ** -8, 1.0),
    ("bf16", 1 + 2.0 ** -8 + 2.0 ** -30, 1 + 2.0 ** -7),     # just above a tie: must not double-round
    ("fp16", 1 + 2.0 ** -11 + 2.0 ** -40, 1 + 2.0 ** -10),
])
def test_cast_ties_and_near_ties(dtype, value, expected):
    assert float(numerics.cast(np.array([value]), dtype)[0]) == expected
    assert float(numerics.cast(np.array([-value]), dtype)[0]) == -expected


@pytest.mark.parametrize("dtype,lo,hi", [("int8", -128, 127), ("int4", -8, 7), ("int16", -2**15, 2**15 - 1),
                                         ("int32", -2**31, 2**31 - 1)])
@given(data=st.data())
def test_cast_to_int_rounds_half_even_and_saturates(dtype, lo, hi, data):
    x = data.draw(arrays(np.float64, st.integers(1, 32), elements=st.one_of(
        st.floats(allow_nan=False, width=64),
        st.integers(2 * lo, 2 * hi).map(lambda i: i / 2),           # many exact ties
    )))
    out = numerics.cast(x, dtype)
    assert out.dtype == np.dtype({"int4": ml_dtypes.int4}.get(dtype, dtype))
    got = out.astype(np.int64).tolist()
    assert got == [round_half_even_int(v, lo, hi) for v in x.tolist()]


@pytest.mark.parametrize("value,int8,int4", [
    (0.5, 0, 0), (1.5, 2, 2), (2.5, 2, 2), (-0.5, 0, 0), (-1.5, -2, -2), (-2.5, -2, -2),
    (7.5, 8, 7), (-8.5, -8, -8), (127.5, 127, 7), (-128.5, -128, -8), (1e9, 127, 7), (-1e9, -128, -8),
    (math.inf, 127, 7), (-math.inf, -128, -8),
])
def test_cast_int_table(value, int8, int4):
    assert int(numerics.cast(np.array([value]), "int8")[0]) == int8
    assert int(numerics.cast(np.array([value]), "int4")[0]) == int4


def test_cast_int_to_narrower_int_saturates():
    x = np.array([-40000, -129, -128, 0, 127, 128, 40000], np.int32)
    assert numerics.cast(x, "int8").tolist() == [-128, -128, -128, 0, 127, 127, 127]
    assert numerics.cast(x, "int16").tolist() == [-32768, -129, -128, 0, 127, 128, 32767]


# ---------------------------------------------------------------- quantize
@given(arrays(np.float32, st.integers(1, 48), elements=st.floats(-1e4, 1e4, width=32)),
       st.floats(2.0 ** -10, 2.0 ** 10, width=32), st.sampled_from(["int8", "int4", "int16"]))
def test_quantize_is_clip_rint_of_fp32_quotient(x, scale, dtype):
    lo, hi = {"int8": (-128, 127), "int4": (-8, 7), "int16": (-32768, 32767)}[dtype]
    out = numerics.quantize(x, np.full(x.shape, scale, np.float32), dtype).astype(np.int64)
    quotient = (x / np.float32(scale)).astype(np.float32)     # the vector unit divides in fp32
    assert out.tolist() == [round_half_even_int(q, lo, hi) for q in quotient.astype(np.float64).tolist()]


def test_quantize_divides_in_fp32():
    """x / scale is 2.50000009 exactly but 2.5 in fp32, which ties to even: 2 (fp64 would give 3)."""
    x = np.array([6.762923240661621, 8.350303649902344], np.float32)
    scale = np.array([2.705169200897217, 5.566869258880615], np.float32)
    assert numerics.quantize(x, scale, "int8").tolist() == [2, 2]       # 1.49999996 in fp64 -> 1.5 in fp32


def test_quantize_broadcasts_per_row_scales_and_ties_to_even():
    x = np.array([[0.5, 1.5, 2.5, 300.0], [1.0, 3.0, 5.0, -7.0]], np.float32)
    scale = np.array([[1.0], [2.0]], np.float32)
    assert numerics.quantize(x, scale, "int8").tolist() == [[0, 2, 2, 127], [0, 2, 2, -4]]


# ---------------------------------------------------------------- round_fp32
finite_f64 = st.floats(allow_nan=False, allow_infinity=False, width=64)


@given(arrays(np.float64, st.integers(1, 32), elements=finite_f64))
def test_round_fp32_rz_truncates_toward_zero_within_one_ulp(x):
    with np.errstate(over="ignore"):
        r = numerics.round_fp32(x, "rz")
    assert r.dtype == np.float32
    r64 = r.astype(np.float64)
    assert np.all(np.abs(r64) <= np.abs(x))
    assert np.all(np.isfinite(r))
    # one step further from zero would pass |x|: r is the last fp32 at or below |x|
    with np.errstate(over="ignore"):
        away = np.nextafter(r, np.copysign(np.float32(np.inf), r)).astype(np.float64)
    beyond_range = np.abs(x) >= float(FP32.max_finite)
    assert np.all((np.abs(away) > np.abs(x)) | (r64 == x) | beyond_range)
    assert r64.tolist() == [round_to(v, FP32, "rz") for v in x.tolist()]


@given(arrays(np.float64, st.integers(1, 32), elements=finite_f64))
def test_round_fp32_rne_matches_reference(x):
    with np.errstate(over="ignore"):
        r = numerics.round_fp32(x, "rne")
    assert r.astype(np.float64).tolist() == [round_to(v, FP32, "rne") for v in x.tolist()]


# ---------------------------------------------------------------- cube_matmul
def fp16_unit():
    """fp16 values in [-1, 1]: products are multiples of 2**-48 below 1, so a group of 16
    sums exactly in fp64 and the references agree bit for bit."""
    return st.floats(-1, 1, width=16)


@given(data=st.data(), mode=st.sampled_from(["rne", "rz"]), group_k=st.sampled_from([1, 4, 16]),
       with_acc=st.booleans())
def test_cube_matmul_matches_exact_group_rounding(data, mode, group_k, with_acc):
    m, k, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 3))
    a = data.draw(arrays(np.float16, (m, k), elements=fp16_unit()))
    b = data.draw(arrays(np.float16, (k, n), elements=fp16_unit()))
    # accumulators on a 2**-24 grid: acc + group sum then spans < 53 bits and is exact in fp64.
    # (Further apart, e.g. acc = 2**-126 plus a group summing to -1, the model's fp64 sum
    # rounds before the fp32 rounding; the rz result then keeps acc's magnitude instead of
    # truncating by one ulp, as truncating hardware that shifts the small term out does.)
    acc = data.draw(arrays(np.float32, (m, n), elements=st.integers(-2**27, 2**27).map(
        lambda i: float(np.float32(i * 2.0 ** -24))))) if with_acc else None
    got = numerics.cube_matmul(acc, a, b, mode, group_k)
    assert got.dtype == np.float32
    expected = cube_reference(None if acc is None else acc.tolist(), a.tolist(), b.tolist(), mode, group_k)
    assert got.astype(np.float64).tolist() == expected


def test_cube_matmul_rne_close_to_fp64(rng):
    m, k, n, group_k = 32, 2048, 32, 16
    a = rng.uniform(-1, 1, (m, k)).astype(np.float16)
    b = rng.uniform(-1, 1, (k, n)).astype(np.float16)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    got = numerics.cube_matmul(None, a, b, "rne", group_k).astype(np.float64)
    # a-priori bound: one fp32 rounding (<= 2**-24 relative) per group of the running sum
    bound = (k // group_k) * 2.0 ** -24 * (np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64))
    assert np.all(np.abs(got - exact) <= bound)
    # and in practice no worse than numpy's fp32 matmul of the same fp16 values
    np32 = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float64)
    assert np.linalg.norm(got - exact) <= 2 * np.linalg.norm(np32 - exact)


def test_cube_matmul_rz_truncation_loses_more_than_rne_on_long_positive_k(rng):
    m, k, n = 16, 4096, 16
    a = rng.uniform(0, 1, (m, k)).astype(np.float16)
    b = rng.uniform(0, 1, (k, n)).astype(np.float16)
    exact = a.astype(np.float64) @ b.astype(np.float64)
    rne = numerics.cube_matmul(None, a, b, "rne", 16).astype(np.float64)
    rz = numerics.cube_matmul(None, a, b, "rz", 16).astype(np.float64)
    assert np.all(rz <= exact)                         # positive sums only ever truncate down
    err_rne = np.linalg.norm(rne - exact) / np.linalg.norm(exact)
    err_rz = np.linalg.norm(rz - exact) / np.linalg.norm(exact)
    assert err_rz > 10 * err_rne
    # truncation loses about half an ulp per group: 256 groups x 2**-25 relative
    assert 1e-6 < err_rz < 256 * 2.0 ** -23


@pytest.mark.parametrize("k", [1, 33, 1000])
def test_cube_matmul_int8_is_exact(rng, k):
    a = rng.integers(-128, 128, (17, k)).astype(np.int8)
    b = rng.integers(-128, 128, (k, 9)).astype(np.int8)
    acc = rng.integers(-2**20, 2**20, (17, 9)).astype(np.int32)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    got = numerics.cube_matmul(None, a, b, "rz", 16)
    assert got.dtype == np.int32 and np.array_equal(got.astype(np.int64), expected)
    got_acc = numerics.cube_matmul(acc, a, b, "rne", 16)
    assert np.array_equal(got_acc.astype(np.int64), expected + acc)


def test_cube_matmul_int8_extremes_and_int32_wrap():
    a = np.full((1, 4096), -128, np.int8)
    b = np.full((4096, 1), -128, np.int8)
    assert int(numerics.cube_matmul(None, a, b, "rne", 16)[0, 0]) == 4096 * 128 * 128
    acc = np.array([[2**31 - 1]], np.int32)
    one = np.ones((1, 1), np.int8)
    assert int(numerics.cube_matmul(acc, one, one, "rne", 16)[0, 0]) == -2**31   # documented: wraps


def test_cube_matmul_int4_is_exact(rng):
    a = rng.integers(-8, 8, (8, 64)).astype(ml_dtypes.int4)
    b = rng.integers(-8, 8, (64, 8)).astype(ml_dtypes.int4)
    expected = a.astype(np.int64) @ b.astype(np.int64)
    assert np.array_equal(numerics.cube_matmul(None, a, b, "rne", 16).astype(np.int64), expected)


# ---------------------------------------------------------------- lut
def test_lut_uses_fp16_quantized_breakpoints():
    bp = [0.1]                                 # fp16(0.1) = 0.0999755859375 < 0.1
    x = np.array([0.09995, 0.09999, 0.0999755859375, 0.1, 0.2], np.float32)
    out = numerics.lut(x, bp, [0.0, 0.0], [1.0, 2.0])
    # 0.09999 lies between the quantized and the written breakpoint: it is past the table's
    # breakpoint, so it takes the upper segment; a value equal to a breakpoint does too
    assert out.tolist() == [1.0, 2.0, 2.0, 2.0, 2.0]


def test_lut_quantizes_slopes_and_intercepts():
    out = numerics.lut(np.array([1.0, -1.0], np.float32), [0.0], [0.1, 0.1], [0.3, 0.3])
    s, c = float(np.float16(0.1)), float(np.float16(0.3))
    assert out.tolist() == [np.float32(s + c), np.float32(-s + c)]
    assert out[0] != np.float32(0.4)


@given(st.lists(st.floats(-100, 100), min_size=1, max_size=8).map(sorted),
       st.data())
def test_lut_matches_piecewise_reference(breakpoints, data):
    n = len(breakpoints) + 1
    coeff = st.lists(st.floats(-10, 10), min_size=n, max_size=n)
    slopes, intercepts = data.draw(coeff), data.draw(coeff)
    x = data.draw(arrays(np.float32, st.integers(1, 32), elements=st.one_of(
        st.floats(-200, 200, width=32), st.sampled_from(breakpoints).map(lambda v: float(np.float16(v))))))
    out = numerics.lut(x, breakpoints, slopes, intercepts).astype(np.float64)
    bp16 = [float(np.float16(v)) for v in breakpoints]
    sl16 = [float(np.float16(v)) for v in slopes]
    ic16 = [float(np.float16(v)) for v in intercepts]
    for xi, yi in zip(x.tolist(), out.tolist()):
        seg = sum(1 for b in bp16 if b <= xi)           # segment i: bp[i-1] <= x < bp[i]
        exact = sl16[seg] * xi + ic16[seg]              # exact in fp64 (11-bit x 24-bit product)
        # fp32 evaluation: one rounding for the product, one for the sum
        bound = 2.0 ** -24 * (abs(sl16[seg] * xi) + abs(exact)) * (1 + 2.0 ** -20) + 2.0 ** -149
        assert abs(yi - exact) <= bound, (xi, seg, yi, exact)

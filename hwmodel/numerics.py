"""Bit-level arithmetic of the simulated units, in numpy.

The cube sums exact products in groups of `group_k` and rounds each group into the FP32
accumulator with the preset's rounding (nearest-even, or truncation toward zero as NVIDIA
tensor cores do); integer modes are exact. The vector unit rounds each result to its
destination type with round-to-nearest-even.
"""
from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache

import numpy as np

from hwmodel.dtypes import FLOATS, INT_RANGE, NUMPY

_blas = None   # threadpoolctl's controller, found once (finding the libraries costs a millisecond a time)


@contextmanager
def single_blas():
    """BLAS on one thread inside. Many small products (replays, row panels) only pay threads'
    wake-ups and spinning, and OpenBLAS's matrix products (fp32 and fp64) and dot products
    (norms) change in their last bits with the thread count: the evaluator runs every
    candidate inside this, so its errors and budgets are the same on every machine."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = ThreadpoolController()
    with _blas.limit(limits=1, user_api="blas"):
        yield


def round_fp32(x: np.ndarray, mode: str) -> np.ndarray:
    """Round float64 values to float32: 'rne' (nearest even) or 'rz' (toward zero)."""
    r = x.astype(np.float32)
    if mode == "rz":
        over = np.abs(r.astype(np.float64)) > np.abs(x)
        if over.any():
            r[over] = np.nextafter(r[over], np.float32(0))
    return r


@lru_cache(maxsize=None)
def _integer(dtype: np.dtype) -> bool:
    """Whether the cube takes `dtype` as an integer mode (int4 is an ml_dtypes type, not kind
    'i'); cached, as str(dtype) costs more than a small product's bookkeeping."""
    return dtype.kind in "iu" or str(dtype) == "int4"


def cube_matmul(acc: np.ndarray | None, a: np.ndarray, b: np.ndarray, rounding: str, group_k: int) -> np.ndarray:
    """acc + a @ b as the cube computes it. Floats: fp32 result; ints: exact, wrapped to int32."""
    if _integer(a.dtype):
        prod = a.astype(np.float64) @ b.astype(np.float64)     # exact: |sum| << 2**53
        out = prod.astype(np.int64)
        if acc is not None:
            out += acc.astype(np.int64)
        return ((out + 2**31) % 2**32 - 2**31).astype(np.int32)
    m, k = a.shape
    n = b.shape[1]
    groups = -(-k // group_k)
    pad = groups * group_k - k
    a64 = a.astype(np.float64, copy=False)    # only read (np.pad copies)
    b64 = b.astype(np.float64, copy=False)
    if pad:
        a64 = np.pad(a64, ((0, 0), (0, pad)))
        b64 = np.pad(b64, ((0, pad), (0, 0)))
    partial = np.matmul(a64.reshape(m, groups, group_k).transpose(1, 0, 2), b64.reshape(groups, group_k, n))
    out = np.zeros((m, n), np.float32) if acc is None else acc.astype(np.float32)
    if rounding == "rne":
        for g in range(groups):   # fp32 accumulator + exact group sum in float64, rounded once to nearest-even
            np.add(out, partial[g], out=out, casting="unsafe")
        return out
    exact = np.empty((m, n), np.float64)
    for g in range(groups):
        np.add(out, partial[g], out=exact)          # fp32 accumulator + exact group sum, in float64
        out = round_fp32(exact, rounding)
    return out


def cast(x: np.ndarray, dtype: str) -> np.ndarray:
    """Round-to-nearest-even conversion; integers saturate."""
    if dtype in FLOATS:
        with np.errstate(over="ignore", invalid="ignore"):
            src = x.astype(np.float64) if x.dtype.kind in "iu" else x
            if dtype == "bf16" and src.dtype == np.float64:
                src = _fp32_round_to_odd(src)   # ml_dtypes casts float64 via float32: avoid double rounding
            return src.astype(NUMPY[dtype])
    lo, hi = INT_RANGE[dtype]
    with np.errstate(invalid="ignore"):
        v = np.clip(np.rint(x.astype(np.float64)), lo, hi)
    return np.nan_to_num(v, nan=0).astype(np.int64).astype(NUMPY[dtype])


def _fp32_round_to_odd(x: np.ndarray) -> np.ndarray:
    """float64 -> float32 truncated, last bit set when inexact: rounding this to a format with
    at most 22 significand bits gives the correctly rounded result of x."""
    r = round_fp32(x, "rz")
    inexact = np.isfinite(x) & (r.astype(np.float64) != x)
    r.view(np.uint32)[inexact] |= np.uint32(1)
    return r


RANDOM_BITS = {"fp32": 24, "fp16": 11, "bf16": 8}   # significand bits: every value is exact


def random_uniform(seed: int, index: np.ndarray, dtype: str) -> np.ndarray:
    """Counter-based pseudo-random numbers in [-1, 1): a SplitMix64 finalizer of (seed, index),
    its top RANDOM_BITS[dtype] bits u giving u / 2**(bits-1) - 1, exact in `dtype`."""
    bits = RANDOM_BITS[dtype]
    x = index.astype(np.uint64) + np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    u = (x >> np.uint64(64 - bits)).astype(np.float64)
    return (u / 2.0 ** (bits - 1) - 1.0).astype(NUMPY[dtype])


def split_fp16(x: np.ndarray, shift: int, half: str = "fp16") -> tuple[np.ndarray, np.ndarray]:
    """hi = half(x); lo = half(fp32(x - hi) * 2**shift), the vector unit's split of fp32 values."""
    with np.errstate(over="ignore", invalid="ignore"):
        x32 = x.astype(np.float32, copy=False)    # only read: no copy of fp32 sources
        hi = x32.astype(NUMPY[half])
        resid = x32 - hi.astype(np.float32)         # float32 already
        lo = (resid * np.float32(2.0 ** shift)).astype(NUMPY[half])
    return hi, lo


def quantize(x: np.ndarray, scale: np.ndarray, dtype: str) -> np.ndarray:
    """saturate(round_half_even(x / scale)) in the integer dtype."""
    with np.errstate(divide="ignore", invalid="ignore"):
        q = x.astype(np.float32) / scale.astype(np.float32)
    return cast(q, dtype)


def lut(x: np.ndarray, breakpoints, slopes, intercepts) -> np.ndarray:
    """Piecewise-linear table with fp16-quantized breakpoints and coefficients, evaluated in fp32."""
    bp = np.asarray(breakpoints, np.float16).astype(np.float32)
    sl = np.asarray(slopes, np.float16).astype(np.float32)
    ic = np.asarray(intercepts, np.float16).astype(np.float32)
    x32 = x.astype(np.float32)
    seg = np.searchsorted(bp, x32, side="right")
    return sl[seg] * x32 + ic[seg]

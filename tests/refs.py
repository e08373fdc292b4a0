"""Independent references for the numerics tests: exact rational arithmetic, no numpy casts.

Every function here works on Python `Fraction`s and rounds with its own code, so a test
that compares the simulator with it is a differential test, not a restatement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction


@dataclass(frozen=True)
class FloatFormat:
    """A binary IEEE-style format: fraction bits, smallest normal exponent, largest finite value."""

    name: str
    frac_bits: int
    emin: int
    emax: int

    @property
    def max_finite(self) -> Fraction:
        return (2 - Fraction(1, 2 ** self.frac_bits)) * Fraction(2) ** self.emax


FP16 = FloatFormat("fp16", 10, -14, 15)
BF16 = FloatFormat("bf16", 7, -126, 127)
FP32 = FloatFormat("fp32", 23, -126, 127)


def _exponent(a: Fraction) -> int:
    """floor(log2(a)) for a > 0, exactly."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if a < Fraction(2) ** e:
        e -= 1
    if a >= Fraction(2) ** (e + 1):
        e += 1
    return e


def round_to(x: float | Fraction, fmt: FloatFormat, mode: str = "rne") -> float:
    """Round an exact value into `fmt` ('rne': nearest, ties to even; 'rz': toward zero)."""
    if isinstance(x, float):
        if math.isnan(x):
            return x
        if math.isinf(x):
            return x if mode == "rne" else math.copysign(float(fmt.max_finite), x)
    a = abs(Fraction(x))
    if a == 0:
        return 0.0
    sign = -1 if x < 0 else 1
    quantum_exp = max(_exponent(a), fmt.emin) - fmt.frac_bits
    scaled = a / Fraction(2) ** quantum_exp
    q = math.floor(scaled)
    rem = scaled - q
    if mode == "rne" and (rem > Fraction(1, 2) or (rem == Fraction(1, 2) and q % 2 == 1)):
        q += 1
    elif mode not in ("rne", "rz"):
        raise ValueError(mode)
    value = q * Fraction(2) ** quantum_exp
    if value > fmt.max_finite:
        return sign * math.inf if mode == "rne" else sign * float(fmt.max_finite)
    return sign * float(value)


def round_half_even_int(x: float, lo: int, hi: int) -> int:
    """Saturating round-half-even of a float to an integer range."""
    if math.isinf(x):
        return hi if x > 0 else lo
    return max(lo, min(hi, round(x)))   # Python's round() of a float is exact and ties to even


def cube_reference(acc, a, b, mode: str, group_k: int) -> list[list[float]]:
    """acc + a @ b the way the cube is documented to do it: exact products summed exactly in
    groups of `group_k` along K, each group rounded into the fp32 accumulator."""
    m, k = len(a), len(a[0])
    n = len(b[0])
    out = [[Fraction(0) if acc is None else Fraction(float(acc[i][j])) for j in range(n)] for i in range(m)]
    for i in range(m):
        for j in range(n):
            value = out[i][j]
            for g in range(0, k, group_k):
                exact = sum((Fraction(float(a[i][t])) * Fraction(float(b[t][j])) for t in range(g, min(k, g + group_k))),
                            Fraction(0))
                value = Fraction(round_to(value + exact, FP32, mode))
            out[i][j] = float(value)
    return out

"""Input distributions for correctness trials, all drawn from an explicit Generator.

`uniform` U[-1,1]; `normal` N(0,1); `wide` sign * 2**U[-8,8] * U[1,2) (16 binades);
`llm` low-rank structure plus 2% noise, with outlier channels on activations (the
inputs where plain INT8 quantization breaks down).
"""
from __future__ import annotations

import numpy as np

DISTRIBUTIONS = ("uniform", "normal", "wide", "llm")


def draw(dist: str, shape: tuple[int, ...], rng: np.random.Generator, role: str = "activation",
         single: bool = False) -> np.ndarray:
    """Samples of `dist` (float64, or float32 drawn directly when `single` and the distribution
    allows: half the work for big benchmark inputs); role 'activation' has outlier columns."""
    if dist == "uniform":
        if single:
            x = rng.random(shape, dtype=np.float32)
            return np.subtract(np.multiply(x, 2, out=x), 1, out=x)
        return rng.uniform(-1.0, 1.0, shape)
    if dist == "normal":
        return rng.standard_normal(shape, dtype=np.float32 if single else np.float64)
    if dist == "wide":
        sign = rng.choice([-1.0, 1.0], shape)
        return sign * np.exp2(rng.uniform(-8.0, 8.0, shape)) * rng.uniform(1.0, 2.0, shape)
    if dist == "llm":
        return _llm_like(shape, rng, outliers=role == "activation")
    raise ValueError(f"unknown distribution {dist!r}; known: {', '.join(DISTRIBUTIONS)}")


def _llm_like(shape: tuple[int, ...], rng: np.random.Generator, outliers: bool) -> np.ndarray:
    """Low-rank (rank 16, geometrically decaying spectrum) + 2% noise, last two dims."""
    *batch, rows, cols = shape
    rank = min(16, rows, cols)
    u = rng.standard_normal((*batch, rows, rank))
    v = rng.standard_normal((*batch, rank, cols))
    spectrum = 0.7 ** np.arange(rank)
    x = (u * spectrum) @ v / np.sqrt(rank)
    x = x + 0.02 * rng.standard_normal(x.shape) * np.std(x)
    if outliers:
        n_out = max(1, cols // 100)
        channels = rng.choice(cols, n_out, replace=False)
        x[..., channels] *= rng.uniform(20.0, 50.0, n_out)
    return x

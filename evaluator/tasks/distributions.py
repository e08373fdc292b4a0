"""Input distributions for correctness trials, all drawn from an explicit Generator.

`uniform` U[-1,1]; `normal` N(0,1); `wide` sign * 2**U[-8,8] * U[1,2) (16 binades);
`llm` low-rank structure plus 2% noise, with outlier channels on activations (the
inputs where plain INT8 quantization breaks down). `qk_outliers` is drawn jointly for
attention (q, k, v): outlier channels shared by q and k make logits in the hundreds.
"""
from __future__ import annotations

import numpy as np

DISTRIBUTIONS = ("uniform", "normal", "wide", "llm")
ATTENTION_DISTRIBUTIONS = DISTRIBUTIONS + ("qk_outliers",)


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
        if single:   # the same law, drawn and computed in float32 in place (big benchmark inputs)
            x = rng.random(shape, dtype=np.float32)
            np.exp2(np.subtract(np.multiply(x, 16, out=x), 8, out=x), out=x)
            scratch = rng.random(shape, dtype=np.float32)   # one scratch array: fresh pages cost more than the math
            x *= np.add(scratch, 1, dtype=np.float32, out=scratch)
            rng.random(dtype=np.float32, out=scratch)
            # negate where scratch < 0.5: x > 0, so copysign by (scratch - 0.5) is exactly that
            # (4x faster than a masked negative; scratch == 0.5 gives +0.0, no flip)
            return np.copysign(x, np.subtract(scratch, 0.5, out=scratch), out=x)
        sign = rng.choice([-1.0, 1.0], shape)
        return sign * np.exp2(rng.uniform(-8.0, 8.0, shape)) * rng.uniform(1.0, 2.0, shape)
    if dist == "llm":
        return _llm_like(shape, rng, outliers=role == "activation")
    if dist in ATTENTION_DISTRIBUTIONS:
        raise ValueError(f"distribution {dist!r} draws q, k and v together: use draw_attention")
    raise ValueError(f"unknown distribution {dist!r}; known: {', '.join(DISTRIBUTIONS)}")


def draw_attention(dist: str, shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """(q, k, v) of shape [..., S, D] in float64: independent draws of a single-tensor
    distribution (role 'weight'), or the joint `qk_outliers`."""
    if dist == "qk_outliers":
        return _qk_outliers(shape, rng)
    return tuple(draw(dist, shape, rng, "weight") for _ in range(3))


def _qk_outliers(shape: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """LLM-like q, k, v with massive-activation channels: per head, max(2, D/32) channels
    shared by q and k. In k they hold a large value of fixed sign (|k| in U[8, 16] per channel,
    15% jitter per token) on every token; in q, one token in eight carries them at |q| in
    U[20, 60] with k's sign, the rest is N(0, 1) like every other channel and v. Those rows'
    logits q.k/sqrt(D) are in the hundreds: their row maxima measured 67 to 315 (median 120 at
    D = 64, 210 at D = 128; shapes 1x2x256x64 to 1x8x2048x128), keys about 13 apart, so exp of
    an unshifted logit overflows fp32 (above 88.7) and softmax is nearly one-hot; the other
    rows' logits stay below about 15, as in the `normal` distribution."""
    *batch, rows, d = shape
    q, k, v = (rng.standard_normal(shape) for _ in range(3))
    n_out = min(d, max(2, d // 32))
    channels = np.argsort(rng.random((*batch, 1, d)), axis=-1)[..., :n_out]      # per head
    sign = rng.choice([-1.0, 1.0], (*batch, 1, n_out))
    k_out = sign * rng.uniform(8.0, 16.0, (*batch, 1, n_out)) * (1 + 0.15 * rng.standard_normal((*batch, rows, n_out)))
    q_out = sign * rng.uniform(20.0, 60.0, (*batch, rows, n_out))
    carriers = rng.random((*batch, rows, 1)) < 0.125
    idx = np.broadcast_to(channels, (*batch, rows, n_out))
    np.put_along_axis(k, idx, k_out, axis=-1)
    np.put_along_axis(q, idx, np.where(carriers, q_out, np.take_along_axis(q, idx, axis=-1)), axis=-1)
    return q, k, v


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

"""Attention tasks: o = softmax(q k^T / sqrt(d)) v, FP16 in and out, non-causal and causal.

Tensors are [B, H, S, D] (batch, heads, sequence, head dim). The error budget is a
relative Frobenius error against the FP64 reference computed from the FP16 inputs. The
benchmark shape is checked on `qk_outliers` (logits in the hundreds): a softmax without
the running max overflows there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluator.tasks.base import Shape, Task
from evaluator.tasks.distributions import draw_attention
from hwmodel.numerics import single_blas
from hwmodel.simulate import TensorArg


@dataclass(frozen=True)
class AttentionTask(Task):
    causal: bool = False
    fixed_budget: float = 3e-3

    def args(self, shape: Shape) -> list[TensorArg]:
        return [TensorArg("q", shape, "fp16"), TensorArg("key", shape, "fp16"), TensorArg("v", shape, "fp16"),
                TensorArg("o", shape, "fp16", "output")]

    def inputs(self, shape: Shape, dist: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        q, k, v = draw_attention(dist, shape, rng)
        return {"q": q.astype(np.float16), "key": k.astype(np.float16), "v": v.astype(np.float16)}

    def reference(self, inputs, coords=None):
        q, k, v = (inputs[n].astype(np.float64) for n in ("q", "key", "v"))
        d = q.shape[-1]
        if coords is None:
            return self._attend(q, k, v, np.arange(q.shape[2]))
        b, h, s, col = coords
        out = np.empty(len(b))
        rows = {}
        for i, key in enumerate(zip(b.tolist(), h.tolist(), s.tolist())):
            rows.setdefault(key, []).append(i)
        with single_blas():   # matrix-vector products: the same values on any number of threads, no spinning
            for (bb, hh, ss), idx in rows.items():
                row = self._attend(q[bb, hh, ss:ss + 1], k[bb, hh], v[bb, hh], np.array([ss]))[0]
                out[idx] = row[col[idx]]
        del d
        return out

    def _attend(self, q: np.ndarray, k: np.ndarray, v: np.ndarray, positions: np.ndarray) -> np.ndarray:
        logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
        if self.causal:
            mask = np.arange(k.shape[-2])[None, :] > positions[:, None]
            logits = np.where(mask, -np.inf, logits)
        logits = logits - logits.max(axis=-1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=-1, keepdims=True)) @ v

    def budget(self, inputs, ref, coords=None):
        return self.fixed_budget

    def flops(self, shape: Shape) -> float:
        b, h, s, d = shape
        return 4.0 * b * h * s * s * d * (0.5 if self.causal else 1.0)

    def compulsory_bytes(self, shape: Shape) -> float:
        b, h, s, d = shape
        return 4 * b * h * s * d * 2


SMALL = ((1, 2, 256, 64), (1, 1, 512, 128), (2, 1, 200, 64))   # d=64, d=128, ragged sequence

ATTENTION = AttentionTask(
    name="attention", description="softmax(q k^T / sqrt(d)) v, FP16 in/out, non-causal",
    engine="fp16", shape_names=("B", "H", "S", "D"), small_shapes=SMALL, bench_shape=(1, 8, 4096, 128),
    distributions=("normal", "uniform", "llm", "qk_outliers"), bench_distribution="qk_outliers")

ATTENTION_CAUSAL = AttentionTask(
    name="attention-causal", description="softmax(q k^T / sqrt(d) + causal mask) v, FP16 in/out",
    engine="fp16", shape_names=("B", "H", "S", "D"), small_shapes=SMALL, bench_shape=(1, 8, 4096, 128),
    distributions=("normal", "uniform", "llm", "qk_outliers"), bench_distribution="qk_outliers", causal=True)

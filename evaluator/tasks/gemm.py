"""GEMM tasks: FP32-accurate (`sgemm`), FP16-in (`hgemm`), quantized approximate (`qgemm`,
`qgemm-int8`).

c[M,N] (fp32) = a[M,K] @ b[K,N]. sgemm and hgemm must be as accurate as a true FP32 GEMM
(error at most budget_factor x that of numpy's float32 matmul on the same inputs).
qgemm has a fixed 2e-3 budget on LLM-like inputs, so INT8 with residual compensation and
plain FP16 compete on speed while plain INT8 does not pass (LRQMM's point). qgemm-int8
asks for INT8-class accuracy: at most 1.5x the error of the standard INT8 recipe
(per-row absmax scales for A, per-column for B, exact integer product) on the same
inputs, so INT8 direct, APSQ partial sums and sparse compensation compete on speed there.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluator.tasks.base import Shape, Task, rel_fro
from evaluator.tasks.distributions import draw
from hwmodel.dtypes import BITS, NUMPY
from hwmodel.simulate import TensorArg


@dataclass(frozen=True)
class GemmTask(Task):
    in_dtype: str = "fp32"
    budget_factor: float = 0.0      # > 0: budget = factor x the error of budget_recipe on the same inputs
    budget_recipe: str = "fp32"     # "fp32": numpy's float32 matmul; "int8": the standard INT8 recipe
    fixed_budget: float = 0.0       # > 0: budget is this relative Frobenius error

    def args(self, shape: Shape) -> list[TensorArg]:
        m, n, k = shape
        return [TensorArg("a", (m, k), self.in_dtype), TensorArg("b", (k, n), self.in_dtype),
                TensorArg("c", (m, n), "fp32", "output")]

    def inputs(self, shape: Shape, dist: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        m, n, k = shape
        single = self.in_dtype == "fp32"
        a = draw(dist, (m, k), rng, "activation", single).astype(NUMPY[self.in_dtype], copy=False)
        b = draw(dist, (k, n), rng, "weight", single).astype(NUMPY[self.in_dtype], copy=False)
        return {"a": a, "b": b}

    def sample_coords(self, mask, rng, n):
        """Elements from at most SAMPLE_ROWS rows, so references are a few row-panel GEMMs."""
        rows = np.flatnonzero(mask.any(axis=1))
        rows = np.sort(rng.choice(rows, min(SAMPLE_ROWS, len(rows)), replace=False))
        r, c = np.nonzero(mask[rows])
        if len(r) > n:
            pick = np.sort(rng.choice(len(r), n, replace=False))
            r, c = r[pick], c[pick]
        return rows[r], c

    def _product(self, inputs, coords, dtype) -> np.ndarray:
        a, b = inputs["a"], inputs["b"].astype(dtype, copy=False)
        if coords is None:
            return a.astype(dtype, copy=False) @ b
        rows, cols = coords
        panel_rows, where = np.unique(rows, return_inverse=True)
        return (a[panel_rows].astype(dtype, copy=False) @ b)[where, cols]   # convert only the rows used

    def reference(self, inputs, coords=None):
        return self._product(inputs, coords, np.float64)

    def budget(self, inputs, ref, coords=None):
        if self.fixed_budget:
            return self.fixed_budget
        # on the caller's BLAS threads: OpenBLAS's fp32 product and the norm depend on the thread count
        recipe = int8_product(inputs, coords) if self.budget_recipe == "int8" else \
            self._product(inputs, coords, np.float32)
        return self.budget_factor * max(rel_fro(recipe, ref), 1e-9)

    def flops(self, shape: Shape) -> float:
        m, n, k = shape
        return 2.0 * m * n * k

    def compulsory_bytes(self, shape: Shape) -> float:
        m, n, k = shape
        return (m * k + k * n) * BITS[self.in_dtype] / 8 + m * n * 4


def int8_product(inputs, coords=None) -> np.ndarray:
    """The standard INT8 GEMM in FP64: symmetric absmax scales per row of A and per column
    of B, round half to even into [-127, 127], exact integer product, dequantized."""
    a, b = inputs["a"], inputs["b"].astype(np.float64)
    if coords is not None:
        rows, where = np.unique(coords[0], return_inverse=True)
        a = a[rows]
    a = a.astype(np.float64)
    sa = np.maximum(np.abs(a).max(axis=1, keepdims=True), 1e-30) / 127.0
    sb = np.maximum(np.abs(b).max(axis=0, keepdims=True), 1e-30) / 127.0
    qa, qb = np.clip(np.rint(a / sa), -127, 127), np.clip(np.rint(b / sb), -127, 127)
    product = (qa @ qb) * sa * sb        # integers below 2**53: exact in FP64
    return product if coords is None else product[where, coords[1]]


SAMPLE_ROWS = 64
SMALL = ((256, 256, 256), (1024, 64, 256), (200, 136, 72))   # square, tall-skinny, ragged

SGEMM = GemmTask(
    name="sgemm", description="FP32 GEMM that must be FP32-accurate (<= 4x the error of a true FP32 GEMM)",
    engine="fp32_split", shape_names=("M", "N", "K"), small_shapes=SMALL, bench_shape=(4096, 4096, 4096),
    distributions=("uniform", "normal", "wide", "llm"), in_dtype="fp32", budget_factor=4.0,
    bench_distribution="wide")

HGEMM = GemmTask(
    name="hgemm", description="FP16-input GEMM with FP32 output, as accurate as FP32 accumulation",
    engine="fp16", shape_names=("M", "N", "K"), small_shapes=SMALL, bench_shape=(4096, 4096, 4096),
    distributions=("uniform", "normal", "wide", "llm"), in_dtype="fp16", budget_factor=4.0,
    bench_distribution="wide")

QGEMM = GemmTask(
    name="qgemm", description="FP32 GEMM with a 2e-3 relative error budget on LLM-like inputs (quantized engines welcome)",
    engine="int8", shape_names=("M", "N", "K"), small_shapes=SMALL, bench_shape=(4096, 4096, 4096),
    distributions=("llm",), in_dtype="fp32", fixed_budget=2e-3, bench_distribution="llm")

QGEMM_INT8 = GemmTask(
    name="qgemm-int8", description="FP32 GEMM with INT8-class accuracy on LLM-like inputs (<= 1.5x the error of "
                                   "per-row/per-column INT8 quantization)",
    engine="int8", shape_names=("M", "N", "K"), small_shapes=SMALL, bench_shape=(4096, 4096, 4096),
    distributions=("llm",), in_dtype="fp32", budget_factor=1.5, budget_recipe="int8", bench_distribution="llm")

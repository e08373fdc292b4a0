"""The task record: what a kernel must compute, on which shapes and inputs, how exactly.

A task names its kernel arguments, builds inputs for a shape and distribution from a
Generator, computes the FP64 reference, says the error budget for those inputs, and
gives FLOPs and compulsory bytes for the roofline. Subclasses hold the family's math.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluator.errors import EvalError
from hwmodel.simulate import TensorArg

Shape = tuple[int, ...]


def rel_fro(x: np.ndarray, ref: np.ndarray) -> float:
    """Relative Frobenius error ||x - ref|| / ||ref|| in float64 (inf if x has NaN/inf)."""
    x = x.astype(np.float64)
    if not np.all(np.isfinite(x)):
        return float("inf")
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(x - ref) / denom) if denom else float(np.linalg.norm(x))


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    engine: str                          # roofline engine the task is meant for
    shape_names: tuple[str, ...]         # e.g. ("M", "N", "K")
    small_shapes: tuple[Shape, ...]      # correctness trials: square, tall-skinny, ragged
    bench_shape: Shape                   # default timing shape
    distributions: tuple[str, ...]
    bench_distribution: str = ""         # checked at the benchmark shape: the hardest one ("" = the last)

    # ---- what subclasses define
    def args(self, shape: Shape) -> list[TensorArg]:
        raise NotImplementedError

    def inputs(self, shape: Shape, dist: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def reference(self, inputs: dict[str, np.ndarray], coords: tuple[np.ndarray, ...] | None = None) -> np.ndarray:
        """FP64 reference output; with `coords` (index arrays, as np.nonzero gives) only those elements."""
        raise NotImplementedError

    def budget(self, inputs: dict[str, np.ndarray], ref: np.ndarray,
               coords: tuple[np.ndarray, ...] | None = None) -> float:
        """Largest acceptable relative Frobenius error for these inputs (same coords as ref)."""
        raise NotImplementedError

    def flops(self, shape: Shape) -> float:
        raise NotImplementedError

    def compulsory_bytes(self, shape: Shape) -> float:
        raise NotImplementedError

    def sample_coords(self, mask: np.ndarray, rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
        """Up to n written elements (index arrays) to check against the FP64 reference."""
        coords = np.nonzero(mask)
        if len(coords[0]) > n:
            pick = np.sort(rng.choice(len(coords[0]), n, replace=False))
            coords = tuple(c[pick] for c in coords)
        return coords

    # ---- shared
    @property
    def hardest_distribution(self) -> str:
        """The distribution the benchmark shape is checked on."""
        return self.bench_distribution or self.distributions[-1]

    @property
    def arg_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.args(self.small_shapes[0]))

    @property
    def output_name(self) -> str:
        return next(a.name for a in self.args(self.small_shapes[0]) if a.role == "output")

    def parse_shape(self, text: str) -> Shape:
        """'4096x4096x4096' -> (4096, 4096, 4096), with a clear error otherwise."""
        parts = text.lower().replace("*", "x").split("x")
        want = "x".join(self.shape_names)
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise EvalError(f"shape {text!r} is not {want} with integers (e.g. "
                            f"{'x'.join(str(s) for s in self.bench_shape)})") from None
        if len(shape) != len(self.shape_names) or any(s <= 0 for s in shape):
            raise EvalError(f"task {self.name} takes shapes {want} of positive integers, got {text!r}")
        return shape

    def format_shape(self, shape: Shape) -> str:
        return "x".join(str(s) for s in shape)

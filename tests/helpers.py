"""Helpers the test modules share: machines loaded once, library kernels, GEMM argument
lists, tracing an inline kernel, and the relative Frobenius error."""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from hwmodel.dsl import Trace, record_trace
from hwmodel.loader import load_kernel
from hwmodel.simulate import TensorArg, declare
from hwmodel.spec import MachineSpec, load_machine
from strategies.library import kernel_path


@lru_cache(maxsize=None)
def machine(name: str) -> MachineSpec:
    return load_machine(name)


def library_kernel(name: str, **knobs):
    return load_kernel(kernel_path(name), **knobs)


def gemm_args(m: int, k: int, n: int, in_dtype: str, out_dtype: str = "fp32") -> list[TensorArg]:
    return [TensorArg("a", (m, k), in_dtype), TensorArg("b", (k, n), in_dtype),
            TensorArg("c", (m, n), out_dtype, "output")]


def trace(kernel_fn, machine_name: str, *args: TensorArg) -> Trace:
    """Record an inline kernel on a preset (rules are checked while recording)."""
    return record_trace(kernel_fn, machine(machine_name), declare(args))


def rel_fro_error(x: np.ndarray, ref: np.ndarray) -> float:
    """||x - ref||_F / ||ref||_F in float64."""
    return float(np.linalg.norm(x.astype(np.float64) - ref) / np.linalg.norm(ref))

"""One call to run a kernel on the simulated machine: record, time, and (optionally) compute.

Timing-only mode passes no data: the kernel runs on shape-only tensors. With data, every
core is replayed numerically, or only `sample_cores` in the last phase (sampled validation).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from hwmodel.dsl import KernelFn, Trace, record_trace
from hwmodel.dtypes import NUMPY, check_dtype
from hwmodel.errors import ShapeError
from hwmodel.execute import coverage, run_numeric
from hwmodel.spec import MachineSpec
from hwmodel.timing import TimingResult, simulate_timing
from hwmodel.views import TensorDecl


@dataclass(frozen=True)
class TensorArg:
    """A kernel argument: name, shape, dtype, and whether the kernel reads or writes it."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str = "input"  # "input" or "output"


@dataclass(frozen=True)
class SimResult:
    timing: TimingResult
    trace: Trace
    outputs: dict[str, np.ndarray] | None     # None in timing-only mode
    written: dict[str, np.ndarray]            # per output: elements some op wrote
    replayed_cores: tuple[int, ...]           # cores whose numbers were computed (last phase)


def declare(args: Sequence[TensorArg]) -> list[TensorDecl]:
    decls = []
    for i, a in enumerate(args):
        check_dtype(a.dtype)
        if a.role not in ("input", "output"):
            raise ShapeError(f"argument {a.name!r}: role must be 'input' or 'output', got {a.role!r}")
        decls.append(TensorDecl(i, a.name, tuple(int(s) for s in a.shape), a.dtype, a.role))
    return decls


def simulate(kernel_fn: KernelFn, machine: MachineSpec, args: Sequence[TensorArg],
             data: Mapping[str, np.ndarray] | None = None, sample_cores: Sequence[int] | None = None,
             timeline_core: int | None = None) -> SimResult:
    """Run `kernel_fn` SPMD on `machine`. Outputs not given in `data` start as NaN."""
    trace = record_trace(kernel_fn, machine, declare(args))
    timing = simulate_timing(trace, machine, timeline_core=timeline_core)
    if data is None:
        return SimResult(timing, trace, None, _names(trace, coverage(trace)), ())
    outputs, written, replayed = replay(trace, machine, data, sample_cores)
    return SimResult(timing, trace, outputs, written, replayed)


def replay(trace: Trace, machine: MachineSpec, data: Mapping[str, np.ndarray],
           sample_cores: Sequence[int] | None = None,
           targets: Mapping[str, np.ndarray] | None = None) -> tuple[dict, dict, tuple[int, ...]]:
    """Compute a recorded trace's numbers: (outputs by name, written masks by name, cores replayed).
    Inputs are copied (the caller's arrays are never modified); outputs start as NaN. With
    `targets` (output name -> element mask) only the ops those elements depend on run: the
    marked elements get exactly their full-replay values, the others are unspecified."""
    gm = {}
    for t in trace.tensors:
        if t.role == "workspace" or t.name not in data:
            gm[t.id] = np.full(t.shape, np.nan if t.dtype.startswith(("fp", "bf")) else 0, NUMPY[t.dtype])
        else:
            arr = np.asarray(data[t.name])
            if arr.shape != t.shape:
                raise ShapeError(f"data for {t.name!r} has shape {arr.shape}, argument declares {t.shape}")
            gm[t.id] = arr.astype(NUMPY[t.dtype], copy=True)
    cores = None if sample_cores is None else set(int(c) for c in sample_cores)
    by_id = None if targets is None else {t.id: np.asarray(targets[t.name], bool)
                                          for t in trace.tensors if t.name in targets}
    written = run_numeric(trace, machine, gm, cores, by_id)
    outputs = {t.name: gm[t.id] for t in trace.tensors if t.role == "output"}
    replayed = tuple(range(machine.num_cores)) if cores is None else tuple(sorted(cores))
    return outputs, _names(trace, written), replayed


def _names(trace: Trace, by_id: dict[int, np.ndarray]) -> dict[str, np.ndarray]:
    names = {t.id: t.name for t in trace.tensors}
    return {names[i]: mask for i, mask in by_id.items()}

"""Load a trusted kernel module (library code, benchmarks, tests) in this process.

Candidate kernels from agents never come through here: the evaluator runs them in a
sandbox. `knobs` override the module's upper-case constants after it is executed.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from hwmodel.dsl import KernelModule
from hwmodel.errors import HwError


def knob_names(source: str) -> dict[str, Any]:
    """The module's upper-case constants with literal values: its tunable knobs."""
    knobs = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign):
            targets = node.targets[0].elts if isinstance(node.targets[0], ast.Tuple) else node.targets
            try:
                values = ast.literal_eval(node.value)
            except ValueError:
                continue
            values = values if isinstance(node.targets[0], ast.Tuple) else (values,)
            for t, v in zip(targets, values):
                if isinstance(t, ast.Name) and t.id.isupper():
                    knobs[t.id] = v
    return knobs


def load_kernel(path: str | Path, **knobs: Any) -> KernelModule:
    return load_kernel_source(Path(path).read_text(), str(path), **knobs)


def load_kernel_source(source: str, path: str = "kernel.py", **knobs: Any) -> KernelModule:
    """The kernel module (callable as its kernel function); record_trace runs a fresh instance
    of it per recording, all cores at once where they agree (hwmodel.spmd)."""
    unknown = set(knobs) - set(knob_names(source))
    if unknown:
        raise HwError(f"{path}: no knob(s) {sorted(unknown)}; it has {sorted(knob_names(source))}")
    module = KernelModule(compile(source, path, "exec"), knobs=knobs, name=f"kernel:{Path(path).stem}")
    module.instantiate()   # it loads, and it defines kernel(k, ...)
    return module

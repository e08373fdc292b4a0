"""Load a trusted kernel module (library code, benchmarks, tests) in this process.

Candidate kernels from agents never come through here: the evaluator runs them in a
sandbox. `knobs` override the module's upper-case constants after it is executed.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from hwmodel.dsl import KernelFn
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


def load_kernel(path: str | Path, **knobs: Any) -> KernelFn:
    return load_kernel_source(Path(path).read_text(), str(path), **knobs)


def load_kernel_source(source: str, path: str = "kernel.py", **knobs: Any) -> KernelFn:
    namespace: dict[str, Any] = {"__name__": f"kernel:{Path(path).stem}"}
    exec(compile(source, path, "exec"), namespace)
    unknown = set(knobs) - set(knob_names(source))
    if unknown:
        raise HwError(f"{path}: no knob(s) {sorted(unknown)}; it has {sorted(knob_names(source))}")
    namespace.update(knobs)
    if not callable(namespace.get("kernel")):
        raise HwError(f"{path}: defines no kernel(k, ...) function")
    return namespace["kernel"]

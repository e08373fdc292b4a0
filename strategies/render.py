"""The coder of the builtin backend: a family's reference kernel with new knob values.

A library kernel's knobs are its module-level UPPER_CASE constants (`BM, BN = 128, 256`).
`render` rewrites those assignment lines in the source and leaves everything else,
comments included, as it was, so an evolved kernel reads like the hand-written one.
"""
from __future__ import annotations

import ast
from typing import Any

from hwmodel.loader import knob_names


def render(source: str, knobs: dict[str, Any]) -> str:
    """`source` with the named constants set to new values. Unknown knob names are an error."""
    unknown = set(knobs) - set(knob_names(source))
    if unknown:
        raise KeyError(f"no knob(s) {sorted(unknown)} in this kernel; it has {sorted(knob_names(source))}")
    lines = source.splitlines(keepends=True)
    for node in reversed(ast.parse(source).body):
        if not isinstance(node, ast.Assign) or len(node.targets) != 1:
            continue
        target = node.targets[0]
        names = [t.id for t in target.elts] if isinstance(target, ast.Tuple) else \
            [target.id] if isinstance(target, ast.Name) else []
        if not names or not any(n in knobs for n in names):
            continue
        current = ast.literal_eval(node.value)
        values = list(current) if isinstance(target, ast.Tuple) else [current]
        values = [knobs.get(n, v) for n, v in zip(names, values)]
        first, last = node.lineno - 1, node.end_lineno - 1
        comment = lines[last].rstrip("\n")
        comment = comment[comment.index("#"):] if "#" in comment[node.end_col_offset:] else ""
        text = f"{', '.join(names)} = {', '.join(repr(v) for v in values)}"
        lines[first:last + 1] = [f"{text:<26} {comment}".rstrip() + "\n"]
    return "".join(lines)

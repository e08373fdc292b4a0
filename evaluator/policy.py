"""Static policy: what a candidate kernel's source may contain, checked on its AST.

Kernels may import only `math` and the DSL, call only a small set of builtins, and touch
no attribute that starts with an underscore or reaches interpreter internals (frames,
tracebacks, code objects, format-string attribute access). This is the first of three
layers (policy, sandboxed process with restricted builtins and an audit hook, and a
trusted replay of the trace), so it is strict rather than clever.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

ALLOWED_IMPORTS = frozenset({"math", "hwmodel.dsl"})
ALLOWED_BUILTINS = frozenset({
    "abs", "all", "any", "bool", "dict", "divmod", "enumerate", "filter", "float", "int", "isinstance",
    "len", "list", "map", "max", "min", "pow", "print", "range", "reversed", "round", "set", "sorted",
    "str", "sum", "tuple", "zip", "True", "False", "None",
    "ValueError", "AssertionError", "ArithmeticError", "ZeroDivisionError",
})
FORBIDDEN_BUILTINS = frozenset({
    "eval", "exec", "compile", "open", "globals", "locals", "vars", "getattr", "setattr", "delattr",
    "hasattr", "__import__", "input", "breakpoint", "help", "dir", "type", "object", "super", "id",
    "memoryview", "bytearray", "bytes", "classmethod", "staticmethod", "property", "exit", "quit",
})
# attribute names that lead from ordinary objects to the interpreter's internals
FORBIDDEN_ATTRIBUTES = frozenset({
    "gi_frame", "gi_code", "gi_yieldfrom", "cr_frame", "cr_code", "cr_await", "ag_frame", "ag_code",
    "f_back", "f_globals", "f_locals", "f_builtins", "f_code", "f_trace", "tb_frame", "tb_next",
    "co_code", "co_consts", "func_globals", "func_code", "im_func", "im_self", "mro",
    "format", "format_map", "with_traceback", "throw", "send", "close",
})


@dataclass(frozen=True)
class PolicyViolation:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def check_policy(source: str) -> PolicyViolation | None:
    """The first violation in `source`, or None. Syntax errors are not violations (they are
    reported as compile errors by the sandbox)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    defined = _defined_names(tree)
    for node in ast.walk(tree):
        problem = _check_node(node, defined)
        if problem:
            return PolicyViolation(getattr(node, "lineno", 0), problem)
    return None


def _defined_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _check_node(node: ast.AST, defined: set[str]) -> str | None:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name not in ALLOWED_IMPORTS:
                return (f"import of {alias.name!r} is not allowed; kernels may import only "
                        f"{', '.join(sorted(ALLOWED_IMPORTS))} (everything else goes through the DSL handle k)")
    elif isinstance(node, ast.ImportFrom):
        if node.module not in ALLOWED_IMPORTS or node.level:
            return (f"import from {node.module!r} is not allowed; kernels may import only "
                    f"{', '.join(sorted(ALLOWED_IMPORTS))}")
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            return f"attribute {node.attr!r} starts with an underscore; kernels use only the DSL's public API"
        if node.attr in FORBIDDEN_ATTRIBUTES:
            return f"attribute {node.attr!r} reaches interpreter internals and is not allowed in kernels"
    elif isinstance(node, ast.Name):
        if node.id.startswith("__"):
            return f"name {node.id!r} is not allowed in kernels (dunder names reach interpreter internals)"
        if node.id in FORBIDDEN_BUILTINS and node.id not in defined:
            return f"builtin {node.id!r} is not allowed in kernels (no eval, file access or introspection)"
    elif isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
        return "async code is not allowed in kernels"
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
        return f"'{type(node).__name__.lower()}' statements are not allowed in kernels (no state across calls)"
    elif isinstance(node, ast.ClassDef):
        return "class definitions are not allowed in kernels (use functions and tuples)"
    return None

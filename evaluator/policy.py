"""Static policy: what a candidate kernel's source may contain, checked on its AST.

Kernels may import `math` and, by name, the DSL's public API (`from hwmodel.dsl import
Kernel`: never the module itself, whose globals lead to `sys` and `gc`), call only a small
set of builtins, and touch no attribute that starts with an underscore or reaches
interpreter internals (frames, tracebacks, code objects, format-string attribute access).
This is the first layer of several (see evaluator.sandbox), so it is strict rather than clever.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass

ALLOWED_IMPORTS = frozenset({"math"})            # `import NAME` / `from NAME import ...`
DSL_MODULE = "hwmodel.dsl"
DSL_PUBLIC_NAMES = frozenset({"Kernel"})         # the only names `from hwmodel.dsl import` may take
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
    rule: str = "policy"     # short stable name: policy.import, policy.builtin, policy.attribute, ...

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
            return PolicyViolation(getattr(node, "lineno", 0), problem[1], problem[0])
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


def _check_node(node: ast.AST, defined: set[str]) -> tuple[str, str] | None:
    """(rule, message) of the node's violation, or None."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name == DSL_MODULE or alias.name.split(".")[0] == DSL_MODULE.split(".")[0]:
                return "policy.import", (f"'import {alias.name}' is not allowed; name what you use: "
                                         f"'from {DSL_MODULE} import {', '.join(sorted(DSL_PUBLIC_NAMES))}'")
            if alias.name not in ALLOWED_IMPORTS:
                return "policy.import", (f"import of {alias.name!r} is not allowed; kernels may import only "
                                         f"{', '.join(sorted(ALLOWED_IMPORTS))} and, from {DSL_MODULE}, "
                                         f"{', '.join(sorted(DSL_PUBLIC_NAMES))} (everything else goes through "
                                         "the DSL handle k)")
    elif isinstance(node, ast.ImportFrom):
        if node.level or node.module not in ALLOWED_IMPORTS | {DSL_MODULE}:
            return "policy.import", (f"import from {node.module!r} is not allowed; kernels may import only "
                                     f"{', '.join(sorted(ALLOWED_IMPORTS))} and, from {DSL_MODULE}, "
                                     f"{', '.join(sorted(DSL_PUBLIC_NAMES))}")
        public = DSL_PUBLIC_NAMES if node.module == DSL_MODULE else None
        for alias in node.names:
            if alias.name == "*":
                return "policy.import", f"'from {node.module} import *' is not allowed; import names one by one"
            if public is not None and alias.name not in public:
                return "policy.import", (f"{alias.name!r} is not part of the DSL's public API; from {DSL_MODULE} "
                                         f"kernels may import only {', '.join(sorted(public))}")
    elif isinstance(node, ast.Attribute):
        if node.attr.startswith("_"):
            return "policy.attribute", (f"attribute {node.attr!r} starts with an underscore; kernels use only the "
                                        "DSL's public API")
        if node.attr in FORBIDDEN_ATTRIBUTES:
            return "policy.attribute", (f"attribute {node.attr!r} reaches interpreter internals and is not "
                                        "allowed in kernels")
    elif isinstance(node, ast.Name):
        if node.id.startswith("__"):
            return "policy.name", (f"name {node.id!r} is not allowed in kernels (dunder names reach interpreter "
                                   "internals)")
        if node.id in FORBIDDEN_BUILTINS and node.id not in defined:
            return "policy.builtin", (f"builtin {node.id!r} is not allowed in kernels (no eval, file access or "
                                      "introspection)")
    elif isinstance(node, (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)):
        return "policy.async", "async code is not allowed in kernels"
    elif isinstance(node, (ast.Global, ast.Nonlocal)):
        return "policy.global", (f"'{type(node).__name__.lower()}' statements are not allowed in kernels "
                                 "(no state across calls)")
    elif isinstance(node, ast.ClassDef):
        return "policy.class", "class definitions are not allowed in kernels (use functions and tuples)"
    return None

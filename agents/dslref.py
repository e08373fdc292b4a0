"""The kernel DSL reference a coder model reads, generated from the code it describes.

Everything here is introspected: the public methods of `hwmodel.dsl.Kernel` (signature and
first docstring paragraph), its public attributes, the op kinds with their operand counts
and pipes (`hwmodel.ops`), the dtypes (`hwmodel.dtypes`) and what a kernel may import or
call (`evaluator.policy`). A change to the simulator shows up here without anyone editing it.
"""
from __future__ import annotations

import ast
import inspect
import textwrap
from functools import lru_cache

from evaluator import policy
from hwmodel import ops
from hwmodel.dsl import Kernel
from hwmodel.dtypes import BITS

_ALIASES = {"Sequence[int]": "ints", "Sequence[float]": "floats", "Sequence[int] | None": "ints | None"}


def kernel_methods() -> list[str]:
    """Names of the public methods of Kernel, in source order."""
    return [name for name, member in vars(Kernel).items()
            if not name.startswith("_") and inspect.isfunction(member)]


def kernel_attributes() -> list[str]:
    """Public instance attributes Kernel.__init__ sets (core_id, num_cores, ...)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(Kernel.__init__)))
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) \
                and isinstance(node.value, ast.Name) and node.value.id == "self" and not node.attr.startswith("_"):
            names.append(node.attr)
    return list(dict.fromkeys(names))


def _signature(fn) -> str:
    """`name(a, b=1) -> View`: parameters without their annotations (the docstring and the
    op table say what they are), the return annotation when there is one."""
    sig = inspect.signature(fn)
    params = []
    for p in list(sig.parameters.values())[1:]:          # drop self
        params.append(p.name if p.default is inspect.Parameter.empty else f"{p.name}={p.default!r}")
    ret = sig.return_annotation
    ret = "" if ret in (inspect.Signature.empty, None, "None") else f" -> {_ALIASES.get(str(ret), ret)}"
    return f"k.{fn.__name__}({', '.join(params)}){ret}"


def _first_paragraph(fn) -> str:
    doc = inspect.getdoc(fn) or ""
    return " ".join(doc.split("\n\n")[0].split())


def _pipe(kind: str) -> str:
    if kind == "copy":
        return "MTE by path"
    if kind == "mma":
        return "M"
    return "V" if kind in ops.VECTOR_KINDS else "S"


def _method_lines(detail: bool = True) -> list[str]:
    """One line per method; methods that are ops carry their pipe, and undocumented ones with
    the same parameters share a line (k.add/sub/mul(dst, a, b) [V])."""
    groups: list[list] = []          # [names, params, ret, doc, pipe]
    for name in kernel_methods():
        fn = vars(Kernel)[name]
        sig = _signature(fn)
        params, ret = sig[sig.index("("):sig.rindex(")") + 1], sig[sig.rindex(")") + 1:]
        doc = _first_paragraph(fn) if detail else ""
        pipe = f" [{_pipe(name)}]" if name in ops.ARITY else ""
        last = groups[-1] if groups else None
        if last and not doc and not last[3] and last[1] == params and last[4] == pipe:
            last[0].append(name)
        else:
            groups.append([[name], params, ret, doc, pipe])
    return [f"  k.{'/'.join(names)}{params}{ret}{pipe}" + (f": {doc}" if doc else "")
            for names, params, ret, doc, pipe in groups]


@lru_cache(maxsize=2)
def dsl_reference(detail: bool = True) -> str:
    """The reference text (about a thousand tokens; it goes into every coder prompt). Without
    `detail`, signatures only: the short form for small context windows."""
    lines = [
        "A kernel is one Python module defining kernel(k, <tensors>); it runs once per core (SPMD).",
        "Tensors are GM views: t.shape, t.dtype, slicing t[i:i+m, j:j+n] gives a view (no data is ever read "
        "in Python). On-chip buffers come from k.alloc/k.ring; a ring is indexed by slot: buf[s % SLOTS]. "
        "Ops on a slot wait for earlier ops on it (hazards), so overlap comes from rings (double buffering). "
        "Every op also costs issue time on the scalar pipe S: use big tiles, few ops.",
        f"Attributes: {', '.join('k.' + a for a in kernel_attributes())}.",
        f"dtypes: {', '.join(BITS)}.",
        "Methods ([pipe] of the ops; vector ops [V] work on UB views only; the cube [M] reads L0A x L0B "
        "into L0C; copy moves only along the machine's data paths, e.g. GM->L1->L0A/L0B, L0C->UB->GM):",
        *_method_lines(detail),
        "Rules the sandbox enforces (violations are rejected before running):",
        f"  imports: only {', '.join(sorted(policy.ALLOWED_IMPORTS))} and 'from {policy.DSL_MODULE} import "
        f"{', '.join(sorted(policy.DSL_PUBLIC_NAMES))}' (no numpy: nothing computes outside ops).",
        f"  builtins allowed: {', '.join(sorted(b for b in policy.ALLOWED_BUILTINS if b[0].islower()))}.",
        "  forbidden: names or attributes starting with '_', "
        f"{', '.join(sorted(b for b in policy.FORBIDDEN_BUILTINS if not b.startswith('_')))}, "
        "class, global/nonlocal, async.",
    ]
    return "\n".join(lines)

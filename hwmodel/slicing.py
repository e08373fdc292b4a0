"""Exact backward slices of a trace: the ops whose results reach chosen output elements.

A numeric replay runs phase by phase, and within a phase core by core; the slice walks
that order backwards from the chosen GM elements, keeping an op when it writes an element
still needed, then needing everything it reads (an op that overwrites its whole
destination without reading it ends that destination's need). Replaying only the kept
ops, in order, gives the chosen elements bit for bit the values of a full replay.
"""
from __future__ import annotations

from bisect import bisect_right

import numpy as np

from hwmodel.dsl import Trace
from hwmodel.ops import Op
from hwmodel.views import View


def phases(ops: tuple[Op, ...]) -> list[list[Op]]:
    """One core's ops split at its barriers."""
    out: list[list[Op]] = [[]]
    for op in ops:
        if op.kind == "barrier":
            out.append([])
        else:
            out[-1].append(op)
    return out


def index(v: View) -> tuple:
    """The numpy index of a view within its tensor or buffer slot."""
    return tuple(slice(o, o + e) for o, e in zip(v.offset, v.extent))


def _reads_destination(op: Op) -> bool:
    """Ops whose destination is also an input (axpy and mla list it among their sources)."""
    return op.kind == "mma" and op.params[0]


def backward_slice(trace: Trace, targets: dict[int, np.ndarray],
                   per_core: list[list[list[Op]]] | None = None) -> list[list[list[bool]]]:
    """keep[phase][core][i]: whether op i of that core's phase is needed for the final values of
    the GM elements marked in `targets` (tensor id -> boolean mask of the tensor's shape).
    `per_core`: the trace's ops already split by phases(), if the caller has them."""
    per_core = per_core if per_core is not None else [phases(ops) for ops in trace.ops]
    n_phases = len(per_core[0]) if per_core else 0
    gm_shapes = {t.id: t.shape for t in trace.tensors}
    need_gm: dict[int, np.ndarray] = {-1 - t: m.copy() for t, m in targets.items()}   # by View.key (GM: < 0)
    need_local: list[dict[int, np.ndarray]] = [{} for _ in per_core]                   # by View.key (slot)
    keep = [[[False] * len(per_core[c][p]) for c in range(len(per_core))] for p in range(n_phases)]
    where: dict[int, tuple] = {}   # view id -> numpy index (views are shared objects)

    def at(v: View) -> tuple:
        i = where.get(id(v))
        if i is None:
            i = where[id(v)] = index(v)
        return i

    for p in reversed(range(n_phases)):
        for core in reversed(range(len(per_core))):
            ops, kept, local = per_core[core][p], keep[p][core], need_local[core]
            buffers = trace.buffers[core]
            # while none of this core's buffers is needed, only its GM writes can be: jump between them
            gm_writes = [i for i, op in enumerate(ops) if op.dst[0].key < 0]
            i = len(ops) - 1
            while i >= 0:
                if not local:
                    j = bisect_right(gm_writes, i) - 1
                    if j < 0:
                        break
                    i = gm_writes[j]
                op = ops[i]
                i -= 1
                for v in op.dst:
                    key = v.key
                    m = need_gm.get(key) if key < 0 else local.get(key)
                    if m is not None and m[at(v)].any():
                        break
                else:
                    continue
                kept[i + 1] = True
                reads_dst = _reads_destination(op)
                if not reads_dst:
                    for v in op.dst:
                        key = v.key
                        m = need_gm.get(key) if key < 0 else local.get(key)
                        if m is not None:
                            m[at(v)] = False
                            if key >= 0 and not m.any():   # fully resolved
                                del local[key]
                for v in op.src + (op.dst if reads_dst else ()):
                    key = v.key
                    needs = need_gm if key < 0 else local
                    m = needs.get(key)
                    if m is None:
                        m = needs[key] = np.zeros(gm_shapes[v.base] if key < 0 else buffers[v.base].shape, bool)
                    m[at(v)] = True
    return keep

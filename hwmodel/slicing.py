"""Exact backward slices of a trace: the ops whose results reach chosen output elements.

A numeric replay runs phase by phase, and within a phase core by core; the slice walks
that order backwards from the chosen GM elements, keeping an op when it writes an element
still needed, then needing everything it reads (an op that overwrites its whole
destination without reading it ends that destination's need). Replaying only the kept
ops, in order, gives the chosen elements bit for bit the values of a full replay.
"""
from __future__ import annotations

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


def backward_slice(trace: Trace, targets: dict[int, np.ndarray]) -> list[list[list[bool]]]:
    """keep[phase][core][i]: whether op i of that core's phase is needed for the final values of
    the GM elements marked in `targets` (tensor id -> boolean mask of the tensor's shape)."""
    per_core = [phases(ops) for ops in trace.ops]
    n_phases = len(per_core[0]) if per_core else 0
    gm_shapes = {t.id: t.shape for t in trace.tensors}
    need_gm: dict[int, np.ndarray] = {t: m.copy() for t, m in targets.items()}
    need_local: list[dict[tuple[int, int], np.ndarray]] = [{} for _ in per_core]
    keep = [[[False] * len(per_core[c][p]) for c in range(len(per_core))] for p in range(n_phases)]

    def mask(core: int, v: View, create: bool) -> np.ndarray | None:
        if v.space == "GM":
            m = need_gm.get(v.base)
            if m is None and create:
                m = need_gm[v.base] = np.zeros(gm_shapes[v.base], bool)
            return m
        key = (v.base, v.slot)
        m = need_local[core].get(key)
        if m is None and create:
            m = need_local[core][key] = np.zeros(trace.buffers[core][v.base].shape, bool)
        return m

    where: dict[int, tuple] = {}   # view id -> numpy index (views are shared objects)

    def at(v: View) -> tuple:
        i = where.get(id(v))
        if i is None:
            i = where[id(v)] = index(v)
        return i

    for p in reversed(range(n_phases)):
        for core in reversed(range(len(per_core))):
            ops, kept, local = per_core[core][p], keep[p][core], need_local[core]
            for i in reversed(range(len(ops))):
                op = ops[i]
                wanted = False
                for v in op.dst:
                    m = need_gm.get(v.base) if v.space == "GM" else local.get((v.base, v.slot))
                    if m is not None and m[at(v)].any():
                        wanted = True
                        break
                if not wanted:
                    continue
                kept[i] = True
                reads_dst = _reads_destination(op)
                if not reads_dst:
                    for v in op.dst:
                        m = mask(core, v, False)
                        if m is not None:
                            m[at(v)] = False
                            if v.space != "GM" and not m.any():   # fully resolved: the fast path skips it
                                del local[(v.base, v.slot)]
                for v in op.src + (op.dst if reads_dst else ()):
                    mask(core, v, True)[at(v)] = True
    return keep

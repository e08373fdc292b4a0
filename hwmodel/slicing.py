"""Exact backward slices of a trace: the ops whose results reach chosen output elements.

A numeric replay runs phase by phase, and within a phase core by core; the slice walks
that order backwards from the chosen GM elements, keeping an op when it writes an element
still needed, then needing what it reads (an op that overwrites its whole destination
without reading it ends that destination's need). Ops whose destination rows depend only
on the same rows of their operands (elementwise ops, per-row reductions, a cube product's
left operand and accumulator) are kept for just the rows still needed: a few checked rows
of a tile replay a few rows of its whole K loop. Replaying only the kept ops (rows), in
order, gives the chosen elements bit for bit the values of a full replay.
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


# kinds whose destination row i depends only on row i of every source with as many rows
# (sources of one row broadcast); "random" is not one (its values depend on its origin)
_ROW_KINDS = frozenset({"copy", "cast", "split_fp16", "fill", "add", "sub", "mul", "div", "max", "min", "adds",
                        "muls", "maxs", "exp", "abs", "compare", "axpy", "mla", "quantize", "dequantize", "lut",
                        "reduce_max", "reduce_sum", "mma"})
MAX_ROW_RUNS = 8   # more runs of needed rows than this: replay the op's rows from the first to the last needed


def row_view(v: View, start: int, stop: int) -> View:
    """Rows start:stop of a view whose visible shape is 2-D (its first visible dimension)."""
    d = next(i for i, k in enumerate(v.keep) if k)
    offset, extent = list(v.offset), list(v.extent)
    offset[d] += start
    extent[d] = stop - start
    return View(v.space, v.base, v.slot, tuple(offset), tuple(extent), v.keep, v.dtype)


def row_op(op: Op, start: int, stop: int) -> Op:
    """The op restricted to destination rows start:stop (see row_runs): what a replay runs
    for an op the slice keeps for some rows only."""
    rows = op.dst[0].shape[0]
    if op.kind == "mma":
        a, b = op.src
        src = (row_view(a, start, stop), b)
    else:
        src = tuple(row_view(v, start, stop) if v.shape[0] == rows else v for v in op.src)
    return Op(op.kind, tuple(row_view(v, start, stop) for v in op.dst), src, op.params, op.line)


MIN_ROW_SAVING = 262_144   # element operations an op must have to be kept by rows: below, the bookkeeping
# costs more than the rows save (flash attention 4096: +0.07 s at 32k; sgemm_cube 4096: -0.5 s)


def _row_work(op: Op) -> int:
    """Element operations of the op if it is row-separable (0 if not): multiply-adds of a cube
    product, elements written and read otherwise."""
    if op.kind not in _ROW_KINDS or len(op.dst[0].shape) != 2 or op.dst[0].shape[0] < 2:
        return 0
    if op.kind in ("reduce_max", "reduce_sum") and op.dst[0].shape[1] != 1:
        return 0                       # per-column reductions read every row
    if not all(len(v.shape) == 2 for v in op.dst + op.src):
        return 0
    rows, cols = op.dst[0].shape
    if op.kind == "mma":
        return rows * cols * op.src[0].shape[1]
    return rows * cols * (len(op.dst) + len(op.src))


def _runs(rows: np.ndarray) -> tuple[tuple[int, int], ...]:
    """Runs of consecutive row numbers, as (start, stop); at most MAX_ROW_RUNS of them."""
    rows = rows.tolist()
    runs, start = [], rows[0]
    for prev, row in zip(rows, rows[1:]):
        if row != prev + 1:
            runs.append((start, prev + 1))
            start = row
    runs.append((start, rows[-1] + 1))
    return tuple(runs) if len(runs) <= MAX_ROW_RUNS else ((runs[0][0], runs[-1][1]),)


def backward_slice(trace: Trace, targets: dict[int, np.ndarray],
                   per_core: list[list[list[Op]]] | None = None) -> list[list[list]]:
    """keep[phase][core][i]: whether op i of that core's phase is needed for the final values of
    the GM elements marked in `targets` (tensor id -> boolean mask of the tensor's shape):
    False, True (the whole op), or the runs (start, stop) of destination rows needed (replay
    each with row_op). `per_core`: the trace's ops already split by phases(), if the caller
    has them."""
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
                runs = None
                work = _row_work(op)
                if work and work >= MIN_ROW_SAVING:
                    rows = op.dst[0].shape[0]
                    needed = np.zeros(rows, bool)
                    for v in op.dst:
                        key = v.key
                        m = need_gm.get(key) if key < 0 else local.get(key)
                        if m is not None:
                            needed |= m[at(v)].reshape(v.shape).any(axis=1)
                    needed = np.flatnonzero(needed)
                    if len(needed) < rows and work * (rows - len(needed)) >= MIN_ROW_SAVING * rows:
                        runs = _runs(needed)
                kept[i + 1] = runs or True
                reads_dst = _reads_destination(op)
                if not reads_dst:
                    for v in op.dst:
                        key = v.key
                        m = need_gm.get(key) if key < 0 else local.get(key)
                        if m is not None:
                            m[at(v)] = False
                            if key >= 0 and not m.any():   # fully resolved
                                del local[key]
                if runs is None:
                    reads = op.src + (op.dst if reads_dst else ())
                else:                   # the rows needed of every operand read row by row
                    rows = op.dst[0].shape[0]
                    whole = (op.src[1],) if op.kind == "mma" else tuple(v for v in op.src if v.shape[0] != rows)
                    by_rows = tuple(v for v in op.src + (op.dst if reads_dst else ()) if not any(v is w for w in whole))
                    reads = whole + tuple(row_view(v, r0, r1) for v in by_rows for r0, r1 in runs)
                for v in reads:
                    key = v.key
                    needs = need_gm if key < 0 else local
                    m = needs.get(key)
                    if m is None:
                        m = needs[key] = np.zeros(gm_shapes[v.base] if key < 0 else buffers[v.base].shape, bool)
                    m[at(v) if runs is None else index(v)] = True
    return keep

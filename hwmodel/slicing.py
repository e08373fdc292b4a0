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
    offset, extent = v.offset, v.extent
    if len(offset) == 2:   # most views: no generator
        (o0, o1), (e0, e1) = offset, extent
        return slice(o0, o0 + e0), slice(o1, o1 + e1)
    return tuple(slice(o, o + e) for o, e in zip(offset, extent))


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


MIN_ROW_SAVING = 0   # element operations an op must have to be kept by rows. The replay runs an op kept for
# several runs of rows once, on those rows gathered (hwmodel.execute), so even small row-wise ops are worth
# restricting: they narrow what their sources need (a drain's rows -> the cube products' rows). Sliced replay
# at 4096, 0 vs 262_144: flash attention 1.03 -> 0.77 s, sgemm_cube 2.05 -> 1.81 s (CPU, first replay)


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


def _table_flags(trace: Trace, test) -> np.ndarray:
    """test(op) for every entry of a decoded trace's op_table, as a boolean array to index
    with the per-core op id arrays (one Python call per distinct op, not per issued op)."""
    return np.fromiter((test(op) for op in trace.op_table), bool, len(trace.op_table))


def _positions(trace: Trace, test) -> list[list[int]]:
    """Per core, the positions in trace.ops[core] of the ops for which test(op) holds: found on
    the op id arrays when the trace has them (a few thousand distinct ops instead of a pass
    over hundreds of thousands of issued ones)."""
    if trace.op_ids is not None:
        flags = _table_flags(trace, test)
        return [np.flatnonzero(flags[np.asarray(ids, np.int64)]).tolist() for ids in trace.op_ids]
    return [[i for i, op in enumerate(ops) if test(op)] for ops in trace.ops]


def phase_bounds(trace: Trace) -> list[list[tuple[int, int]]]:
    """bounds[core][phase]: (start, stop) of that phase's ops in trace.ops[core], barriers
    excluded; trace.ops[core][start:stop] is phases(trace.ops[core])[phase]."""
    out = []
    for core, barriers in enumerate(_positions(trace, _is_barrier)):
        starts = [0] + [b + 1 for b in barriers]
        out.append(list(zip(starts, barriers + [len(trace.ops[core])])))
    return out


def _is_barrier(op: Op) -> bool:
    return op.kind == "barrier"


def _writes_gm(op: Op) -> bool:
    return bool(op.dst) and op.dst[0].key < 0


class _Facts:
    """What the slice needs of one distinct op, computed once however often cores issue it:
    its destinations and reads as (key, numpy index, view), whether it reads its destination,
    and its row work if that is large enough to keep it by rows (else 0; see _row_work)."""

    __slots__ = ("op", "dst", "reads", "reads_dst", "work", "_split", "by_runs")

    def __init__(self, op: Op, min_saving: int, operand):
        self.op = op
        self.reads_dst = _reads_destination(op)
        self.dst = tuple([operand(v) for v in op.dst])
        self.reads = tuple([operand(v) for v in (op.src + op.dst if self.reads_dst else op.src)])
        work = _row_work(op) if op.kind in _ROW_KINDS else 0
        self.work = work if work >= min_saving else 0
        self._split = None
        self.by_runs: dict[tuple, tuple] = {}   # runs -> _row_reads(self, runs)

    def split_reads(self) -> tuple[tuple, tuple]:
        """For an op kept by rows, as row_op restricts it: the reads it makes whole (a cube
        product's right operand, sources of one broadcast row), and those it makes row by row,
        with the numpy axis of their rows."""
        if self._split is None:
            op = self.op
            rows = op.dst[0].shape[0]
            whole = {id(op.src[1])} if op.kind == "mma" else {id(v) for v in op.src if v.shape[0] != rows}
            self._split = (tuple(r for r in self.reads if id(r[2]) in whole),
                           tuple((key, at, v, v.keep.index(True)) for key, at, v in self.reads if id(v) not in whole))
        return self._split


def backward_slice(trace: Trace, targets: dict[int, np.ndarray],
                   per_core: list[list[list[Op]]] | None = None) -> list[list[list]]:
    """keep[phase][core][i]: whether op i of that core's phase is needed for the final values of
    the GM elements marked in `targets` (tensor id -> boolean mask of the tensor's shape):
    False, True (the whole op), or the runs (start, stop) of destination rows needed (replay
    each with row_op). `per_core` is accepted for compatibility and not needed: phases are
    found with phase_bounds."""
    bounds = phase_bounds(trace)
    keep = [[[False] * (stop - start) for start, stop in (b[p] for b in bounds)]
            for p in range(len(bounds[0]) if bounds else 0)]
    for p, cores in enumerate(sliced_ops(trace, targets, bounds)):
        for core, kept in enumerate(cores):
            for i, k in kept:
                keep[p][core][i] = k
    return keep


def sliced_ops(trace: Trace, targets: dict[int, np.ndarray],
               bounds: list[list[tuple[int, int]]]) -> list[list[list[tuple[int, object]]]]:
    """The slice of backward_slice, sparse: kept[phase][core] lists (i, keep) for the kept ops
    only, in replay order (i: the op's position within the core's phase, as in backward_slice).
    `bounds`: phase_bounds(trace). A replay walks these instead of every op of every core."""
    n_phases = len(bounds[0]) if bounds else 0
    gm_shapes = {t.id: t.shape for t in trace.tensors}
    need_gm: dict[int, np.ndarray] = {-1 - t: m.copy() for t, m in targets.items()}   # by View.key (GM: < 0)
    need_local: list[dict[int, np.ndarray]] = [{} for _ in bounds]                    # by View.key (slot)
    kept_out = [[[] for _ in bounds] for _ in range(n_phases)]
    gm_writes = _positions(trace, _writes_gm)
    facts: dict[int, _Facts] = {}   # id(op) -> _Facts (ops live as long as the trace)
    operands: dict[int, tuple] = {}  # id(view) -> (key, numpy index, view): many ops share a buffer's views

    def operand(v: View) -> tuple:
        entry = operands.get(id(v))
        if entry is None:
            entry = operands[id(v)] = (v.key, index(v), v)
        return entry

    min_saving = MIN_ROW_SAVING
    gm_get = need_gm.get
    needed_rows = _RowSummary(need_gm)
    for p in reversed(range(n_phases)):
        for core in reversed(range(len(bounds))):
            start, stop = bounds[core][p]
            ops, kept, local = trace.ops[core], kept_out[p][core], need_local[core]
            buffers, writes, local_get = trace.buffers[core], gm_writes[core], local.get
            i = stop - 1
            while i >= start:
                if not local:   # none of this core's buffers is needed: only its GM writes can be
                    j = bisect_right(writes, i) - 1
                    if j < 0 or writes[j] < start:
                        break
                    i = writes[j]
                op = ops[i]
                i -= 1
                if not local and needed_rows.none_needed(op):   # most GM writes: skipped before any numpy
                    continue
                f = facts.get(id(op))
                if f is None:
                    f = facts[id(op)] = _Facts(op, min_saving, operand)
                if f.work:     # needed rows, if any: the op may be kept for those only
                    needed = _needed_rows(f, gm_get, local_get)
                    if not len(needed):
                        continue
                    runs = _worth_rows(f, needed)
                else:
                    for key, at, _ in f.dst:
                        m = gm_get(key) if key < 0 else local_get(key)
                        if m is not None and m[at].any():
                            break
                    else:
                        continue
                    runs = None
                kept.append((i + 1 - start, runs or True))
                if not f.reads_dst:
                    for key, at, _ in f.dst:
                        m = gm_get(key) if key < 0 else local_get(key)
                        if m is not None:
                            m[at] = False
                            if key >= 0 and not m.any():   # fully resolved
                                del local[key]
                for key, at, v in (f.reads if runs is None else _row_reads(f, runs)):
                    m = gm_get(key) if key < 0 else local_get(key)
                    if m is None:
                        if key < 0:
                            m = need_gm[key] = np.zeros(gm_shapes[v.base], bool)
                        else:
                            m = local[key] = np.zeros(buffers[v.base].shape, bool)
                    m[at] = True
                    if key < 0:
                        needed_rows.mark(key, at)
            kept.reverse()
    return kept_out


class _RowSummary:
    """Per 2-D GM need mask, which rows may hold a needed element (a byte per row): an op
    whose GM destinations cover only rows marked 0 is surely not needed, found without a
    numpy call. Rows are marked when a need is added and never cleared (a stale mark only
    sends the op to the exact check), so skipping on it is exact."""

    def __init__(self, need_gm: dict[int, np.ndarray]):
        self.rows: dict[int, bytearray] = {key: bytearray(m.any(axis=1).astype(np.uint8).tobytes())
                                           for key, m in need_gm.items() if m.ndim == 2}

    def mark(self, key: int, at: tuple) -> None:
        rows = self.rows.get(key)
        if rows is None and len(at) == 2:
            rows = self.rows[key] = bytearray(0)
        if rows is not None:
            r = at[0]
            if len(rows) < r.stop:
                rows.extend(bytes(r.stop - len(rows)))
            rows[r] = b"\x01" * (r.stop - r.start)

    def none_needed(self, op: Op) -> bool:
        """Every destination of op is a 2-D GM region whose rows hold no needed element."""
        for v in op.dst:
            if v.key >= 0:
                return False
            rows = self.rows.get(v.key)
            if rows is None:
                if len(v.offset) != 2:
                    return False
                continue        # no mask: nothing of this tensor is needed (masks are created by needs)
            r0 = v.offset[0]
            if rows.find(1, r0, r0 + v.extent[0]) != -1:
                return False
        return True


def _needed_rows(f: _Facts, gm_get, local_get) -> np.ndarray:
    """The destination rows of a row-wise op that some later op still needs (sorted; empty if
    none: most ops a walk visits are, so that is checked first, whole)."""
    needed = None
    for key, at, v in f.dst:
        m = gm_get(key) if key < 0 else local_get(key)
        if m is not None:
            region = m[at]
            if region.any():
                rows = region.reshape(v.shape).any(axis=1)
                needed = rows if needed is None else needed | rows
    return _NONE if needed is None else needed.nonzero()[0]


_NONE = np.zeros(0, np.int64)


def _worth_rows(f: _Facts, needed: np.ndarray) -> tuple[tuple[int, int], ...] | None:
    """The runs of the needed rows, if keeping the op for those only saves enough; else None."""
    rows = f.dst[0][2].shape[0]
    if len(needed) < rows and f.work * (rows - len(needed)) >= MIN_ROW_SAVING * rows:
        return _runs(needed)
    return None


def _row_reads(f: _Facts, runs: tuple[tuple[int, int], ...]) -> tuple[tuple, ...]:
    """The reads of an op kept for runs of rows: operands read whole (a cube product's right
    operand, sources of one broadcast row), then the runs of rows of the others. Kept per
    (op, runs): a core keeps the same ops for the same rows all through its K loop."""
    reads = f.by_runs.get(runs)
    if reads is None:
        whole, by_rows = f.split_reads()
        reads = f.by_runs[runs] = whole + tuple((key, at[:d] + (slice(at[d].start + r0, at[d].start + r1),) + at[d + 1:], v)
                                                for key, at, v, d in by_rows for r0, r1 in runs)
    return reads

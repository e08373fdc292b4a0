"""Numeric replay of a trace: real numbers through the ops, and which outputs were written.

Cores run phase by phase (phases are separated by barriers), so GM workspaces written
before a barrier are seen after it. With `targets`, only the exact backward slice of the
chosen output elements runs (hwmodel.slicing): how the evaluator checks every writer core
at the benchmark shape. With `cores`, only those cores run in the last phase.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from hwmodel import numerics
from hwmodel.dtypes import FLOATS, NUMPY
from hwmodel.dsl import Trace
from hwmodel.ops import Op
from hwmodel.slicing import phase_bounds, row_op, sliced_ops
from hwmodel.slicing import index as _index
from hwmodel.spec import MachineSpec
from hwmodel.views import View

_POISON_INT = 0x5A  # uninitialised integer buffers hold garbage, not zeros


class _Memory:
    """The arrays of one replay: GM tensors by id, and each core's buffers by id (allocated on
    first touch: a sampled replay runs most cores only through their first phases)."""

    def __init__(self, gm: dict[int, np.ndarray]):
        self.gm = gm
        self.cores: dict[int, dict[int, np.ndarray]] = {}
        self.local: dict[int, np.ndarray] = {}
        self.decls: dict[int, object] = {}
        # Per core, id(view) -> (view, the numpy view read, the numpy view written): the
        # region of a view is found once, not per op that touches it (views are shared
        # objects, reused through a K loop; arrays live as long as the replay, so these numpy
        # views stay valid). The entry holds the view, so its id stays its own.
        self.regions: dict[int, dict[int, tuple[View, np.ndarray, np.ndarray]]] = {}
        self.gm_regions: dict[int, tuple[View, np.ndarray, np.ndarray]] = {}
        self.local_regions: dict[int, tuple[View, np.ndarray, np.ndarray]] = {}

    def select_core(self, core: int, buffers) -> None:
        self.local = self.cores.setdefault(core, {})
        self.local_regions = self.regions.setdefault(core, {})
        self.decls = {d.id: d for d in buffers}

    def _base(self, v: View) -> np.ndarray:
        if v.space == "GM":
            return self.gm[v.base]
        arr = self.local.get(v.base)
        if arr is None:
            d = self.decls[v.base]
            arr = self.local[v.base] = _uninitialised((d.count, *d.shape), d.dtype)
        return arr[v.slot]

    def _region(self, v: View) -> tuple[View, np.ndarray, np.ndarray]:
        regions = self.gm_regions if v.space == "GM" else self.local_regions
        hit = regions.get(id(v))
        if hit is None:
            written = self._base(v)[_index(v)]
            shaped = written.reshape(v.shape)    # drops unit dimensions only: a view, never a copy
            assert np.may_share_memory(shaped, written) or not shaped.size
            hit = regions[id(v)] = (v, shaped, written)
        return hit

    def read(self, v: View) -> np.ndarray:
        return self._region(v)[1]

    def write(self, v: View, value: np.ndarray) -> None:
        region = self._region(v)[2]
        value = np.asarray(value)
        if value.dtype != region.dtype:
            value = value.astype(region.dtype)
        region[...] = value.reshape(v.extent)


def _uninitialised(shape: tuple[int, ...], dtype: str) -> np.ndarray:
    if dtype in FLOATS:
        return np.full(shape, np.nan, NUMPY[dtype])
    return np.full(shape, _POISON_INT, np.int64).astype(NUMPY[dtype])


def replay_validated(trace: Trace, machine: MachineSpec, data: dict[str, np.ndarray],
                     targets: dict[str, np.ndarray] | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """hwmodel.simulate.replay for a trace that passed hwmodel.validate (it writes no input), on
    the caller's input arrays without copying them: (outputs by name, written masks by name).
    Workspaces and outputs start as NaN (integers as 0), as there."""
    gm: dict[int, np.ndarray] = {}
    fresh: dict[int, str] = {}   # uninitialised tensors of a sliced replay: id -> dtype (see _start_touched)
    for t in trace.tensors:
        if t.role == "input" and t.name in data:
            arr = np.asarray(data[t.name], NUMPY[t.dtype]).view()
            arr.flags.writeable = False      # a write would be a hole in validation: fail loudly
            if arr.shape != t.shape:
                raise ValueError(f"data for {t.name!r} has shape {arr.shape}, argument declares {t.shape}")
            gm[t.id] = arr
        elif targets is not None:   # a slice touches a fraction: its regions start as NaN (_start_touched)
            gm[t.id] = np.empty(t.shape, NUMPY[t.dtype])
            fresh[t.id] = t.dtype
        else:
            gm[t.id] = np.full(t.shape, np.nan if t.dtype in FLOATS else 0, NUMPY[t.dtype])
    by_id = None if targets is None else {t.id: np.asarray(targets[t.name], bool)
                                          for t in trace.tensors if t.name in targets}
    written = run_numeric(trace, machine, gm, None, by_id, fresh)
    names = {t.id: t.name for t in trace.tensors}
    return ({t.name: gm[t.id] for t in trace.tensors if t.role == "output"},
            {names[i]: mask for i, mask in written.items()})


def run_numeric(trace: Trace, machine: MachineSpec, gm: dict[int, np.ndarray],
                cores: set[int] | None = None, targets: dict[int, np.ndarray] | None = None,
                fresh: dict[int, str] | None = None) -> dict[int, np.ndarray]:
    """Replay `trace` on the GM arrays (modified in place). Returns, per output tensor id, a
    boolean mask of the elements that some op wrote (on any core, replayed or not).

    `cores`: replay only these cores in the last phase. `targets` (tensor id -> element mask):
    replay only the backward slice of those elements, which end with their full-replay values
    (other elements are unspecified). `fresh` (tensor id -> dtype, with targets): tensors
    allocated uninitialised, of which the slice's regions are set to NaN (0) first."""
    with numerics.single_blas():   # thousands of small GEMMs: threads only contend
        return _run(trace, machine, gm, cores, targets, fresh)


def _run(trace: Trace, machine: MachineSpec, gm: dict[int, np.ndarray], cores: set[int] | None,
         targets: dict[int, np.ndarray] | None, fresh: dict[int, str] | None = None) -> dict[int, np.ndarray]:
    mem = _Memory(gm)
    bounds = phase_bounds(trace)
    kept = sliced_ops(trace, targets, bounds) if targets is not None else None
    if fresh:
        _start_touched(trace, gm, bounds, kept, targets, fresh)
    rows = _RowOps()
    n_phases = len(bounds[0]) if bounds else 0
    for phase in range(n_phases):
        for core, core_bounds in enumerate(bounds):
            if phase == n_phases - 1 and cores is not None and core not in cores:
                continue
            start, stop = core_bounds[phase]
            if kept is None:
                ops = trace.ops[core][start:stop]
            else:
                ops = rows.kept_ops(trace.ops[core], start, kept[phase][core])
                if not ops:
                    continue
            mem.select_core(core, trace.buffers[core])
            for op in ops:
                if type(op) is Op:
                    _HANDLERS[op.kind](op, mem, machine)
                else:
                    op.replay(mem, machine)
    return coverage(trace)


def _start_touched(trace: Trace, gm: dict[int, np.ndarray], bounds, kept, targets: dict[int, np.ndarray],
                   fresh: dict[int, str]) -> None:
    """Set to NaN (integers to 0) the regions of the `fresh` (uninitialised) GM tensors that the
    slice's ops touch, and the target elements: every element the sliced replay reads is in
    one of them, so it sees what a replay on all-NaN tensors sees, without writing (and
    faulting in) the untouched rest of the workspaces and outputs."""
    done: set[int] = set()
    for phase, phase_kept in enumerate(kept):
        for core, entries in enumerate(phase_kept):
            ops, start = trace.ops[core], bounds[core][phase][0]
            for i, _ in entries:
                op = ops[start + i]
                for v in op.dst + op.src:
                    if v.space == "GM" and v.base in fresh and id(v) not in done:
                        done.add(id(v))
                        gm[v.base][_index(v)] = np.nan if fresh[v.base] in FLOATS else 0
    for tensor, mask in targets.items():
        if tensor in fresh:
            gm[tensor][mask] = np.nan if fresh[tensor] in FLOATS else 0


class _RowOps:
    """The ops of a slice in replay order, each restriction to rows built once per replay: a
    core repeats the same op for the same rows through a K loop, and the same Op and View
    objects let _Memory reuse their numpy regions."""

    def __init__(self):
        self.made: dict[tuple, tuple[Op, object]] = {}   # (id(op), runs) -> (op, its replayable restriction)

    def kept_ops(self, ops: tuple[Op, ...], start: int, kept: list[tuple[int, object]]) -> list:
        """ops[start + i] for the kept (i, True), and its restriction for the kept (i, runs)."""
        out = []
        for i, k in kept:
            op = ops[start + i]
            out.append(op if k is True else self.restricted(op, k))
        return out

    def restricted(self, op: Op, runs: tuple[tuple[int, int], ...]):
        key = (id(op), runs)
        hit = self.made.get(key)
        if hit is None:      # the entry holds op, so its id stays its own while the entry lives
            hit = self.made[key] = (op, row_op(op, *runs[0]) if len(runs) == 1 else _GatheredRows(op, runs))
        return hit[1]


@lru_cache(maxsize=4096)
def _rows(runs: tuple[tuple[int, int], ...]) -> np.ndarray:
    """The row numbers of runs (start, stop), as a read-only index array (shared: cores keep
    many ops for the same rows)."""
    rows = np.array([r for r0, r1 in runs for r in range(r0, r1)], np.intp)
    rows.flags.writeable = False
    return rows


class _GatheredRows:
    """An op kept for several runs of its rows (see hwmodel.slicing), replayed once on those
    rows gathered, rather than once per run: the op's handler sees row_op(op) on as many rows,
    and reads and writes of its row-wise operands go to the chosen rows of the real ones.
    Row i of the result depends only on row i of those operands, so the values are the ones a
    replay of each run gives."""

    def __init__(self, op: Op, runs: tuple[tuple[int, int], ...]):
        self.rows = _rows(runs)
        self.op = row_op(op, 0, len(self.rows))
        self.real = {id(f): (f, v) for f, v in zip(self.op.dst + self.op.src, op.dst + op.src) if f is not v}
        self.mem: _Memory | None = None

    def replay(self, mem: _Memory, machine: MachineSpec) -> None:
        self.mem = mem
        try:
            _HANDLERS[self.op.kind](self.op, self, machine)
        finally:
            self.mem = None

    def read(self, v: View) -> np.ndarray:
        hit = self.real.get(id(v))
        return self.mem.read(v) if hit is None else self.mem.read(hit[1])[self.rows]

    def write(self, v: View, value: np.ndarray) -> None:
        region = self.mem.read(self.real[id(v)][1])      # destinations are always row-wise
        value = np.asarray(value)
        if value.dtype != region.dtype:
            value = value.astype(region.dtype)
        region[self.rows] = value.reshape(v.shape)


def coverage(trace: Trace, cores: set[int] | None = None) -> dict[int, np.ndarray]:
    """Per output tensor id, the elements written by some GM copy on any core (or on `cores`)."""
    written = {t.id: np.zeros(t.shape, bool) for t in trace.tensors if t.role == "output"}
    # identical ops are shared objects, and marking twice changes nothing: visit each once
    ops = trace.distinct_ops() if cores is None else {id(op): op for c in cores for op in trace.ops[c]}.values()
    for op in ops:
        if op.kind == "copy" and op.dst[0].space == "GM" and op.dst[0].base in written:
            v = op.dst[0]
            written[v.base][_index(v)] = True
    return written


# ---------------------------------------------------------------- op semantics
def _copy(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    mem.write(op.dst[0], mem.read(op.src[0]))


def _mma(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    acc_view, = op.dst
    a_view, b_view = op.src
    accumulate, transpose_b = op.params
    b = mem.read(b_view)
    acc = mem.read(acc_view) if accumulate else None
    out = numerics.cube_matmul(acc, mem.read(a_view), b.T if transpose_b else b,
                               machine.cube.accumulation, machine.cube.accumulation_group_k)
    mem.write(acc_view, out)


def _float_result(op: Op, mem: _Memory, fn) -> None:
    """Compute in float64 from the operands, round once to the destination dtype."""
    dst = op.dst[0]
    args = [mem.read(s).astype(np.float64) for s in op.src]
    with np.errstate(all="ignore"):
        value = fn(*args)
    mem.write(dst, numerics.cast(np.broadcast_to(value, dst.shape), dst.dtype))


_ARITH = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide,
    "max": np.maximum, "min": np.minimum, "exp": np.exp, "abs": np.abs,
}


def _arith(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    fn = _ARITH[op.kind]
    if op.dst[0].dtype in FLOATS:
        _float_result(op, mem, fn)
    else:  # integer add/sub/max/min: exact, then saturate
        args = [mem.read(s).astype(np.int64) for s in op.src]
        mem.write(op.dst[0], numerics.cast(np.broadcast_to(fn(*args), op.dst[0].shape), op.dst[0].dtype))


def _scalar(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    c = op.params[0]
    fn = {"adds": lambda x: x + c, "muls": lambda x: x * c, "maxs": lambda x: np.maximum(x, c)}[op.kind]
    _float_result(op, mem, fn)


_COMPARE = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal,
            "eq": np.equal, "ne": np.not_equal}


def _compare(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    """Exact comparison of the operands as stored (floats as float64, integers as int64)."""
    a, b = (mem.read(s) for s in op.src)
    wide = np.float64 if op.src[0].dtype in FLOATS else np.int64
    mask = _COMPARE[op.params[0]](a.astype(wide), b.astype(wide))
    mem.write(op.dst[0], numerics.cast(np.broadcast_to(mask, op.dst[0].shape).astype(np.float64), op.dst[0].dtype))


def _axpy(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    alpha = op.params[0]
    _float_result(op, mem, lambda x, y: y + alpha * x)


def _mla(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    _float_result(op, mem, lambda a, b, acc: acc + a * b)


def _fill(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    dst = op.dst[0]
    mem.write(dst, numerics.cast(np.full(dst.shape, op.params[0]), dst.dtype))


def _random(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    dst = op.dst[0]
    seed, origin, shape = op.params
    coords = np.indices(dst.extent).reshape(len(dst.extent), -1) + np.asarray(origin).reshape(-1, 1)
    index = np.ravel_multi_index(tuple(coords), shape) if coords.size else np.zeros(0, np.int64)
    mem.write(dst, numerics.random_uniform(seed, index, dst.dtype))


def _reduce(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    dst, = op.dst
    src = mem.read(op.src[0])
    src = src.reshape(1, -1) if src.ndim == 1 else src
    axis = 1 if tuple(dst.shape) == (src.shape[0], 1) else 0   # per row, unless dst is (1, N)
    fn = np.max if op.kind == "reduce_max" else np.sum
    value = fn(src.astype(np.float64) if dst.dtype in FLOATS else src.astype(np.int64), axis=axis, keepdims=True)
    mem.write(dst, numerics.cast(value, dst.dtype))


def _cast(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    mem.write(op.dst[0], numerics.cast(mem.read(op.src[0]), op.dst[0].dtype))


def _split(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    hi_view, lo_view = op.dst
    hi, lo = numerics.split_fp16(mem.read(op.src[0]), op.params[0], hi_view.dtype)
    mem.write(hi_view, hi)
    mem.write(lo_view, lo)


def _quantize(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    src, scale = (mem.read(s) for s in op.src)
    mem.write(op.dst[0], numerics.quantize(src, scale, op.dst[0].dtype))


def _dequantize(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    _float_result(op, mem, lambda q, sr, sc: q * sr * sc)


def _lut(op: Op, mem: _Memory, machine: MachineSpec) -> None:
    mem.write(op.dst[0], numerics.lut(mem.read(op.src[0]), *op.params))


_HANDLERS = {
    "copy": _copy, "mma": _mma, "cast": _cast, "split_fp16": _split, "fill": _fill, "random": _random, "axpy": _axpy, "mla": _mla,
    "quantize": _quantize, "dequantize": _dequantize, "lut": _lut,
    "compare": _compare,
    "reduce_max": _reduce, "reduce_sum": _reduce,
    **{k: _arith for k in _ARITH}, **{k: _scalar for k in ("adds", "muls", "maxs")},
}

"""The kernel DSL (Ascend-C flavoured Python) and the recorder that turns a kernel into a trace.

A kernel is `kernel(k, *tensors)`, run once per core (SPMD). It allocates buffers
statically, then issues ops through `k`; each op is checked against the machine's rules
where it happens and appended to the core's trace. No data is touched here.
"""
from __future__ import annotations

import gc
import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from math import ceil, prod
from collections.abc import Sequence
from types import CodeType
from typing import Callable, Mapping

import numpy as np

from hwmodel.dtypes import BITS, check_dtype, nbytes
from hwmodel.errors import BoundsError, CapacityError, HwError, LimitError, ParamError, ShapeError
from hwmodel.limits import (MAX_BUFFERS_PER_CORE, MAX_NAME_CHARS, MAX_OPS_PER_CORE, MAX_VIEW_RANK,
                            MAX_WORKSPACE_BYTES, MAX_WORKSPACES)
from hwmodel.ops import COMPARE_MODES, Op, check_op_once
from hwmodel.spec import MachineSpec
from hwmodel.views import BufferDecl, Ring, TensorDecl, View

_getframe = sys._getframe   # the kernel's line of each op (a module global: one lookup less per op)


class OpSeq(Sequence):
    """One core's ops as ids into a table of distinct ops shared by all cores (traces decoded
    from arrays, or recorded all cores at once): an op object is looked up when the sequence
    is iterated or indexed, never built per issued op."""

    __slots__ = ("ids", "table")

    def __init__(self, ids: np.ndarray, table: tuple[Op, ...]):
        self.ids = ids
        self.table = table

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return tuple(map(self.table.__getitem__, self.ids[i].tolist()))
        return self.table[int(self.ids[i])]

    def __iter__(self):
        return map(self.table.__getitem__, self.ids.tolist())

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and all(
            a is b or a == b for a, b in zip(self, other))

    __hash__ = None


@dataclass(frozen=True)
class Trace:
    """What a kernel did on every core: GM tensors, per-core buffers and per-core ops."""

    machine: str
    tensors: tuple[TensorDecl, ...]
    buffers: tuple[tuple[BufferDecl, ...], ...]
    ops: tuple[Sequence[Op], ...]   # per core, in issue order; identical ops are one shared object
    # The same program as arrays, where the trace was decoded from them (evaluator.codec) or
    # recorded all cores at once (hwmodel.spmd): ops[c][i] is op_table[op_ids[c][i]] (ops[c]
    # is then an OpSeq). Whole-trace passes (validation, coverage, timing, the benchmark
    # check's targets) then work on distinct ops and numpy arrays, not per-op objects.
    op_table: tuple[Op, ...] | None = field(default=None, repr=False, compare=False)
    op_ids: tuple | None = field(default=None, repr=False, compare=False)   # per core: int64 numpy arrays

    @classmethod
    def from_arrays(cls, machine: str, tensors: tuple, buffers: tuple, table: tuple[Op, ...],
                    ids: Sequence[np.ndarray]) -> "Trace":
        return cls(machine, tensors, buffers, tuple(OpSeq(x, table) for x in ids), table, tuple(ids))

    @property
    def num_ops(self) -> int:
        return sum(len(o) for o in self.ops)

    def distinct_ops(self) -> list[Op]:
        if self.op_ids is not None:
            return [self.op_table[i] for i in self.used_op_indices().tolist()]
        seen: dict[int, Op] = {}
        for core_ops in self.ops:
            for op in core_ops:
                seen.setdefault(id(op), op)
        return list(seen.values())

    def used_op_indices(self) -> np.ndarray:
        """Indices into op_table of the ops some core issues (sorted); traces with op_ids only."""
        issued = np.concatenate([np.asarray(ids, np.int64) for ids in self.op_ids] or [np.zeros(0, np.int64)])
        return np.flatnonzero(np.bincount(issued, minlength=len(self.op_table)))   # = np.unique, without sorting


def slot_bytes(machine: MachineSpec, space: str, shape: tuple[int, ...], dtype: str) -> int:
    """Bytes one slot occupies: rows padded to the alignment, fractal memories to whole fractals."""
    mem = machine.memories[space]
    cols = shape[-1] if shape else 1
    rows = prod(shape[:-1]) if len(shape) > 1 else 1
    row_bytes = ceil(nbytes(dtype, cols) / mem.alignment_bytes) * mem.alignment_bytes
    if mem.fractal_rows > 1:
        rows = ceil(rows / mem.fractal_rows) * mem.fractal_rows
    return rows * row_bytes


def tile_share(shape: Sequence[int], tile: Sequence[int], order: str, group: int, core: int,
               num_cores: int) -> list[tuple[int, int]]:
    """Core `core`'s tiles of the grid over `shape` (see Kernel.tiles)."""
    rows, cols = int(shape[0]), int(shape[1])
    tr, tc = int(tile[0]), int(tile[1])
    nr, nc = ceil(rows / tr), ceil(cols / tc)
    if order == "row" and group == 1:
        seq = [(i, j) for i in range(nr) for j in range(nc)]
    elif order == "col":
        seq = [(i, j) for j in range(nc) for i in range(nr)]
    elif order == "row":
        seq = [(i, j) for b in range(0, nr, group) for j in range(nc) for i in range(b, min(b + group, nr))]
    else:
        raise HwError(f"tiles: order must be 'row' or 'col', got {order!r}")
    return [(i * tr, j * tc) for (i, j) in seq[core::num_cores]]


class _Shared:
    """What all cores of one recording share: the GM workspaces (the n-th request on every
    core is one tensor), the read-only inputs, and the table of distinct ops. Identical ops
    (same kind, operands, parameters and source line) are one object, checked once; most
    of a GEMM's ops repeat across steps and cores, so traces stay small."""

    def __init__(self, first_id: int, inputs: frozenset[int] = frozenset(), max_ops_per_core: int = MAX_OPS_PER_CORE):
        self.next_id = first_id
        self.max_ops_per_core = max_ops_per_core
        self.decls: list[TensorDecl] = []
        self.workspace_views: list[View] = []
        self.inputs = inputs
        self.ops: dict[tuple, Op] = {}
        self.handles: dict[tuple[BufferDecl, bool], View | Ring] = {}   # one handle per buffer for all cores
        self.rules_passed: set = set()   # see hwmodel.ops.check_op_once

    def handle(self, decl: BufferDecl, ring: bool) -> View | Ring:
        """The view or ring of a buffer, shared by every core that declares the same buffer,
        so the slices cores take of it are the same objects (and so are their ops)."""
        h = self.handles.get((decl, ring))
        if h is None:
            h = self.handles[(decl, ring)] = Ring(decl) if ring else View.whole(decl.space, decl.id, 0, decl.shape,
                                                                                    decl.dtype)
        return h

    def workspace(self, index: int, shape: tuple[int, ...], dtype: str, name: str) -> View:
        """The view of the index-th workspace (the same object for every core)."""
        if index < len(self.decls):
            decl = self.decls[index]
            if decl.shape != shape or decl.dtype != dtype:
                raise ShapeError(f"workspace #{index} was requested as {decl.shape} {decl.dtype} by another "
                                 f"core and as {shape} {dtype} here; every core must request the same workspaces")
            return self.workspace_views[index]
        decl = TensorDecl(self.next_id, name, shape, dtype, "workspace")
        total = sum(tensor_bytes(d) for d in self.decls) + tensor_bytes(decl)
        if total > MAX_WORKSPACE_BYTES:
            raise CapacityError(f"workspace: {total:,} B of GM workspaces requested, at most "
                                f"{MAX_WORKSPACE_BYTES:,} B per kernel")
        self.next_id += 1
        self.decls.append(decl)
        self.workspace_views.append(View.whole("GM", decl.id, 0, decl.shape, decl.dtype))
        return self.workspace_views[index]


class _Sealed(type):
    """Kernel's methods cannot be replaced by a kernel (they are the machine, and a recording of
    all cores at once must see the same methods as one core's)."""

    def __setattr__(cls, name, value):
        raise HwError(f"Kernel.{name} cannot be assigned: the DSL's classes are read-only")

    def __delattr__(cls, name):
        raise HwError(f"Kernel.{name} cannot be deleted: the DSL's classes are read-only")


class Kernel(metaclass=_Sealed):
    """What a kernel sees: its core id, static allocation, and the machine's ops."""

    def __init__(self, machine: MachineSpec, core_id: int, shared: _Shared):
        self.core_id = core_id
        self.num_cores = machine.num_cores
        self.machine_name = machine.name
        self._machine = machine
        self._shared = shared
        self._distinct = shared.ops
        self._max_ops = shared.max_ops_per_core
        self._n_workspaces = 0
        self._ops: list[Op] = []
        self._buffers: list[BufferDecl] = []
        self._used = {name: 0 for name in machine.memories}

    # ------------------------------------------------------------ allocation
    def alloc(self, space: str, shape: Sequence[int], dtype: str, count: int = 1, name: str = "") -> View | Ring:
        """Allocate `count` slots of `shape` in `space`; count > 1 returns a ring indexed by slot."""
        return self._shared.handle(self._declare(space, shape, dtype, count, name), count > 1)

    def ring(self, space: str, shape: Sequence[int], dtype: str, name: str = "", count: int = 2) -> Ring:
        """A ring of `count` slots, indexed by slot number even when count is 1 (so a kernel's
        buffering depth can be a knob: buf[i % SLOTS] works for SLOTS = 1 too)."""
        return self._shared.handle(self._declare(space, shape, dtype, count, name), True)

    def _declare(self, space: str, shape: Sequence[int], dtype: str, count: int, name: str) -> BufferDecl:
        machine = self._machine
        if space not in machine.memories:
            raise HwError(f"alloc: {machine.name} has no on-chip memory {space!r}; "
                          f"it has {', '.join(machine.memories)} (GM tensors come from k.workspace)")
        shape = _dims("alloc", shape)
        check_dtype(dtype)
        if count < 1:
            raise ShapeError(f"alloc: count must be >= 1, got {count}")
        if len(self._buffers) >= MAX_BUFFERS_PER_CORE:
            raise CapacityError(f"alloc: more than {MAX_BUFFERS_PER_CORE} buffers on one core; reuse rings")
        name = check_name("alloc", name or f"{space.lower()}_{len(self._buffers)}")
        need = slot_bytes(machine, space, shape, dtype) * count
        cap = machine.memories[space].capacity_bytes
        if self._used[space] + need > cap:
            raise CapacityError(
                f"{space}: {self._used[space] + need:,} B requested, {cap:,} B capacity "
                f"({self._used[space]:,} B already allocated + {need:,} B for {name!r} {shape} {dtype} x{count}); "
                "use smaller tiles or fewer slots")
        self._used[space] += need
        decl = BufferDecl(len(self._buffers), space, shape, dtype, int(count), name)
        self._buffers.append(decl)
        return decl

    def workspace(self, shape: Sequence[int], dtype: str, name: str = "") -> View:
        """A GM scratch tensor shared by all cores (write it, k.barrier(), then read it)."""
        shape = _dims("workspace", shape)
        check_dtype(dtype)
        index = self._n_workspaces
        if index >= MAX_WORKSPACES:
            raise CapacityError(f"workspace: more than {MAX_WORKSPACES} workspaces; reuse them")
        self._n_workspaces += 1
        return self._shared.workspace(index, shape, dtype, check_name("workspace", name or f"workspace_{index}"))

    def capacity(self, space: str) -> int:
        """Bytes of `space` still free on this core."""
        if space not in self._machine.memories:
            raise HwError(f"capacity: {self.machine_name} has no memory {space!r}; it has "
                          f"{', '.join(self._machine.memories)}")
        return self._machine.memories[space].capacity_bytes - self._used[space]

    def has_path(self, src: str, dst: str) -> bool:
        """Whether the machine can copy src -> dst (e.g. 910B drains L0C straight to GM)."""
        return self._machine.path(src, dst) is not None

    def fractal(self, dtype: str) -> tuple[int, int, int]:
        """The cube's (m, n, k) fractal for `dtype` inputs."""
        mode = self._machine.cube.modes.get(dtype)
        if mode is None:
            raise HwError(f"fractal: {self.machine_name}'s cube takes {', '.join(self._machine.cube.modes)}, "
                          f"not {dtype!r}")
        return mode.m, mode.n, mode.k

    # ------------------------------------------------------------ work distribution
    def tiles(self, shape: Sequence[int], tile: Sequence[int], order: str = "row", group: int = 1) -> list:
        """This core's share of the 2-D tile grid over `shape`, round-robin over cores: the
        (row, col) offsets of its tiles.

        order="row" walks tiles row by row; "col" column by column; group=G walks bands of
        G tile-rows column by column (swizzle), so cores running together share panels.
        """
        return tile_share(shape, tile, order, group, self.core_id, self.num_cores)

    def share(self, items: Sequence) -> list:
        """This core's round-robin share of `items`: items[core_id::num_cores]. Prefer it (and
        k.tiles) to indexing with k.core_id: then the evaluator records all cores in one run."""
        return list(items)[self.core_id::self.num_cores]

    # ------------------------------------------------------------ ops
    def _emit(self, kind: str, dst: tuple, src: tuple, params: tuple = ()) -> None:
        self._record(_getframe(2).f_lineno, kind, dst, src, params)

    def _record(self, line: int, kind: str, dst: tuple, src: tuple, params: tuple) -> None:
        """Append the op issued at the kernel's `line`. Views are memoized (the same slice of the
        same buffer is one object), so an op is identified by its operands' identities; a view
        reached another way is only a separate (equal) op, checked on its own."""
        key = (kind, line, params, *dst, None, *src)
        try:
            op = self._distinct.get(key)
        except TypeError:
            op = None
        ops = self._ops
        if op is None:
            op = self._new_op(key, kind, dst, src, params)
        elif len(ops) >= self._max_ops:
            self._too_many(kind)
        ops.append(op)

    def _new_op(self, key: tuple, kind: str, dst: tuple, src: tuple, params: tuple) -> Op:
        """First time an op is seen: check its operands and its hardware rules once."""
        if len(self._ops) >= self._shared.max_ops_per_core:
            self._too_many(kind)
        bad = next((v for v in dst + src if type(v) is not View), None)
        if bad is not None:
            raise HwError(f"{kind}: operands must be tensor or buffer views, got {type(bad).__name__} "
                          "(index a ring with its slot number: buf[i % 2])")
        if kind == "copy" and dst[0].space == "GM" and dst[0].base in self._shared.inputs:
            raise HwError(f"copy: GM tensor #{dst[0].base} is a kernel input and read-only; write results to "
                          "the output or to a k.workspace")
        op = Op(kind, dst, src, params, key[1])
        check_op_once(op, self._machine, self._shared.rules_passed)
        self._distinct[key] = op
        return op

    def _too_many(self, kind: str) -> None:
        raise LimitError(f"{kind}: core {self.core_id} issued more than {self._shared.max_ops_per_core:,} ops; "
                      "use larger tiles (every op also costs issue time on the scalar pipe)")

    def copy(self, dst: View, src: View) -> None:
        """Move data along a data path of the machine (MTE pipes; L0C->UB on the vector side)."""
        # _emit inlined (the most frequent op): the same key, the same checks
        key = ("copy", _getframe(1).f_lineno, (), dst, None, src)
        try:
            op = self._distinct.get(key)
        except TypeError:
            op = None
        ops = self._ops
        if op is None:
            op = self._new_op(key, "copy", (dst,), (src,), ())
        elif len(ops) >= self._max_ops:
            self._too_many("copy")
        ops.append(op)

    def mma(self, acc: View, a: View, b: View, accumulate: bool = False, transpose_b: bool = False) -> None:
        """acc (L0C) (+)= a (L0A, MxK) @ b (L0B, KxN, or NxK with transpose_b) on the cube."""
        params = (bool(accumulate), bool(transpose_b))
        key = ("mma", _getframe(1).f_lineno, params, acc, None, a, b)   # _emit inlined, as in copy
        try:
            op = self._distinct.get(key)
        except TypeError:
            op = None
        ops = self._ops
        if op is None:
            op = self._new_op(key, "mma", (acc,), (a, b), params)
        elif len(ops) >= self._max_ops:
            self._too_many("mma")
        ops.append(op)

    def cast(self, dst: View, src: View) -> None:
        """Convert dtype (round to nearest even; saturating for integers)."""
        self._emit("cast", (dst,), (src,))

    def split_fp16(self, hi: View, lo: View, src: View, shift: int = 11) -> None:
        """hi = fp16(src); lo = fp16((src - hi) * 2**shift): src == hi + lo * 2**-shift to ~22 bits."""
        if not isinstance(shift, int) or not 0 <= shift <= 24:
            raise HwError(f"split_fp16: shift must be an int in 0..24, got {shift!r}")
        self._emit("split_fp16", (hi, lo), (src,), (shift,))

    def fill(self, dst: View, value: float) -> None:
        self._emit("fill", (dst,), (), (float(value),))

    def random(self, dst: View, seed: int, origin: Sequence[int] | None = None,
               tensor_shape: Sequence[int] | None = None) -> None:
        """Deterministic pseudo-random values in [-1, 1): element g of a logical tensor of
        `tensor_shape` gets hash(seed, flat index of g). dst covers the block at `origin`, so
        filling a tensor tile by tile gives the same numbers however it is tiled. Defaults:
        the view's own offset within its buffer, and the buffer's shape."""
        if not isinstance(seed, int) or not 0 <= seed < 2**32:
            raise HwError(f"random: seed must be an int in 0..2**32-1, got {seed!r}")
        if not isinstance(dst, View):
            raise HwError(f"random: the destination must be a buffer view, got {type(dst).__name__}")
        if tensor_shape is None:
            on_chip = dst.space in self._machine.memories and dst.base < len(self._buffers)
            tensor_shape = self._buffers[dst.base].shape if on_chip else dst.extent
        origin = dst.offset if origin is None else origin
        self._emit("random", (dst,), (), (seed, tuple(int(o) for o in origin), tuple(int(s) for s in tensor_shape)))

    def add(self, dst: View, a: View, b: View) -> None:
        self._emit("add", (dst,), (a, b))

    def sub(self, dst: View, a: View, b: View) -> None:
        self._emit("sub", (dst,), (a, b))

    def mul(self, dst: View, a: View, b: View) -> None:
        self._emit("mul", (dst,), (a, b))

    def div(self, dst: View, a: View, b: View) -> None:
        self._emit("div", (dst,), (a, b))

    def max(self, dst: View, a: View, b: View) -> None:
        self._emit("max", (dst,), (a, b))

    def min(self, dst: View, a: View, b: View) -> None:
        self._emit("min", (dst,), (a, b))

    def adds(self, dst: View, src: View, scalar: float) -> None:
        self._emit("adds", (dst,), (src,), (float(scalar),))

    def muls(self, dst: View, src: View, scalar: float) -> None:
        self._emit("muls", (dst,), (src,), (float(scalar),))

    def maxs(self, dst: View, src: View, scalar: float) -> None:
        self._emit("maxs", (dst,), (src,), (float(scalar),))

    def axpy(self, dst: View, src: View, alpha: float = 1.0) -> None:
        """dst += alpha * src."""
        self._emit("axpy", (dst,), (src, dst), (float(alpha),))

    def mla(self, dst: View, a: View, b: View) -> None:
        """dst += a * b (operands broadcast: (M,1) x (1,N) is a rank-1 update)."""
        self._emit("mla", (dst,), (a, b, dst))

    def compare(self, dst: View, a: View, b: View, mode: str) -> None:
        """dst = 1 where `a mode b` holds, else 0 (mode: gt, ge, lt, le, eq, ne; operands
        broadcast). A float mask: select with k.mul, count with k.reduce_sum."""
        if mode not in COMPARE_MODES:
            raise HwError(f"compare: mode must be one of {', '.join(COMPARE_MODES)}, got {mode!r}")
        self._emit("compare", (dst,), (a, b), (mode,))

    def exp(self, dst: View, src: View) -> None:
        self._emit("exp", (dst,), (src,))

    def abs(self, dst: View, src: View) -> None:
        self._emit("abs", (dst,), (src,))

    def reduce_max(self, dst: View, src: View) -> None:
        """Max per row (dst (M,1)) or per column (dst (1,N))."""
        self._emit("reduce_max", (dst,), (src,))

    def reduce_sum(self, dst: View, src: View) -> None:
        """Sum per row (dst (M,1)) or per column (dst (1,N))."""
        self._emit("reduce_sum", (dst,), (src,))

    def quantize(self, dst: View, src: View, scale: View) -> None:
        """dst = saturate(round_half_even(src / scale)); scale (M,1) per row or (1,N) per column."""
        self._emit("quantize", (dst,), (src, scale))

    def dequantize(self, dst: View, src: View, scale_rows: View, scale_cols: View) -> None:
        """dst = src * scale_rows * scale_cols (an integer GEMM result back to fp32)."""
        self._emit("dequantize", (dst,), (src, scale_rows, scale_cols))

    def lut(self, dst: View, src: View, breakpoints: Sequence[float], slopes: Sequence[float],
            intercepts: Sequence[float]) -> None:
        """Piecewise-linear function: segment i (between breakpoints i-1 and i) gives slope*x + intercept.

        Breakpoints, slopes and intercepts are quantized to fp16 (the table's storage format).
        """
        bp, sl, ic = (tuple(float(x) for x in seq) for seq in (breakpoints, slopes, intercepts))
        if len(sl) != len(bp) + 1 or len(ic) != len(bp) + 1:
            raise ShapeError(f"lut: {len(bp)} breakpoints need {len(bp) + 1} slopes and intercepts, "
                             f"got {len(sl)} and {len(ic)}")
        if list(bp) != sorted(bp) or not 1 <= len(bp) <= 64:
            raise ShapeError(f"lut: breakpoints must be sorted, 1..64 of them; got {len(bp)}")
        self._emit("lut", (dst,), (src,), (bp, sl, ic))

    def barrier(self) -> None:
        """All cores wait here until every core has arrived (GM writes before it are visible after)."""
        self._ops.append(Op("barrier", (), (), (), sys._getframe(1).f_lineno))


KernelFn = Callable[..., None]
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def check_name(what: str, name) -> str:
    """Buffer and workspace names appear in messages shown to people and models: short identifiers only."""
    if type(name) is not str or len(name) > MAX_NAME_CHARS or not _NAME.fullmatch(name):
        raise ParamError(f"{what}: a name is at most {MAX_NAME_CHARS} letters, digits, '_', '.' or '-'")
    return name


def _dims(what: str, shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not shape or len(shape) > MAX_VIEW_RANK or any(s <= 0 for s in shape):
        raise ShapeError(f"{what}: shape {shape} must have 1 to {MAX_VIEW_RANK} dimensions, all positive")
    return shape


@contextmanager
def paused_gc():
    """Traces are hundreds of thousands of small acyclic objects: the cyclic collector would
    rescan them over and over (it doubled recording time), so it pauses while they are built."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class KernelModule:
    """A kernel as its compiled module. Every recording of a core (or the one run that records
    all cores) executes the module afresh, so no state carries from one core to the next:
    every core runs the same program from the same start, as SPMD cores do. Calling it
    calls the kernel function of one instance (for callers that run it directly)."""

    def __init__(self, code: CodeType, builtins: Mapping | None = None, knobs: Mapping | None = None,
                 name: str = "kernel"):
        import builtins as _builtins
        self.code = code
        self.builtins = dict(builtins if builtins is not None else vars(_builtins))
        self.knobs = dict(knobs or {})
        self.name = name
        self._refusal: str | None = None
        self._default: KernelFn | None = None

    def instantiate(self, overlay: Mapping | None = None) -> KernelFn:
        """A fresh instance's kernel function; `overlay` replaces builtins (see hwmodel.spmd)."""
        namespace = {"__builtins__": {**self.builtins, **overlay} if overlay else self.builtins, "__name__": self.name}
        exec(self.code, namespace)
        namespace.update(self.knobs)
        fn = namespace.get("kernel")
        if not callable(fn):
            raise HwError(f"{self.name}: defines no kernel(k, ...) function")
        return fn

    @property
    def refusal(self) -> str:
        """Why it cannot be recorded all cores at once ('' if it can; see hwmodel.spmd.refusal)."""
        if self._refusal is None:
            from hwmodel.spmd import refusal
            self._refusal = refusal(self.code)
        return self._refusal

    def __call__(self, k: "Kernel", *args) -> None:
        if self._default is None:
            self._default = self.instantiate()
        self._default(k, *args)


def record_trace(kernel: KernelFn | KernelModule, machine: MachineSpec, tensors: Sequence[TensorDecl],
                 max_ops_per_core: int = MAX_OPS_PER_CORE, all_cores: bool = True) -> Trace:
    """Run the kernel's Python for every core and collect what it issued. A KernelModule is
    first run once for all cores (hwmodel.spmd; not with all_cores=False), core by core where
    its cores diverge, each core on a fresh instance; a plain function runs once per core."""
    args = [View.whole("GM", t.id, 0, t.shape, t.dtype) for t in tensors]   # shared by all cores

    def shared() -> _Shared:
        return _Shared(first_id=max((t.id for t in tensors), default=-1) + 1,
                       inputs=frozenset(t.id for t in tensors if t.role == "input"), max_ops_per_core=max_ops_per_core)

    with paused_gc():
        if isinstance(kernel, KernelModule):
            if all_cores and not kernel.refusal:
                from hwmodel.spmd import record_all_cores
                state = shared()
                recorded = record_all_cores(kernel.instantiate, machine, args, state)
                if recorded is not None:
                    buffers, table, ids = recorded
                    return Trace.from_arrays(machine.name, tuple(tensors) + tuple(state.decls), buffers, table, ids)
            instances = (kernel.instantiate() for _ in range(machine.num_cores))
        else:
            instances = (kernel for _ in range(machine.num_cores))
        state = shared()
        buffers, ops = [], []
        for core, kernel_fn in enumerate(instances):
            k = Kernel(machine, core, state)
            kernel_fn(k, *args)
            buffers.append(tuple(k._buffers))
            ops.append(tuple(k._ops))
    barriers = {sum(1 for op in core_ops if op.kind == "barrier") for core_ops in ops}
    if len(barriers) > 1:
        raise HwError(f"barrier: cores reach different numbers of barriers ({sorted(barriers)}); "
                      "every core must call k.barrier() the same number of times or the chip deadlocks")
    return Trace(machine.name, tuple(tensors) + tuple(state.decls), tuple(buffers), tuple(ops))


def tensor_bytes(decl: TensorDecl) -> int:
    return nbytes(decl.dtype, prod(decl.shape))


__all__ = ["Kernel", "KernelModule", "Trace", "record_trace", "BITS", "BoundsError"]

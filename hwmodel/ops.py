"""The op record of a trace, and the hardware rules and static cost of each op kind.

`check_op` enforces the rule an op must obey (legal path, dtypes, shapes, alignment)
with the numbers in the message; `static_cost` says which pipe runs it and for how
many cycles. GM transfers get their time from the timing engine (L2 and bandwidth
sharing depend on what the other cores did).
"""
from __future__ import annotations

import math
from math import ceil, prod

from hwmodel.dtypes import BITS, FLOATS, INTS
from hwmodel.errors import AlignmentError, DtypeError, HwError, ParamError, PathError, ShapeError
from hwmodel.spec import MachineSpec
from hwmodel.views import View


class Op:
    """One instruction: kind, views it writes, views it reads, and scalar parameters."""

    __slots__ = ("kind", "dst", "src", "params", "line")

    def __init__(self, kind: str, dst: tuple[View, ...], src: tuple[View, ...], params: tuple = (),
                 line: int = 0):
        self.kind = kind
        self.dst = dst
        self.src = src
        self.params = params
        self.line = line

    def __repr__(self) -> str:
        return f"Op({self.kind}, dst={self.dst}, src={self.src}, params={self.params})"


ELEMENTWISE_BINARY = frozenset({"add", "sub", "mul", "div", "max", "min"})
ELEMENTWISE_SCALAR = frozenset({"adds", "muls", "maxs"})
ELEMENTWISE_UNARY = frozenset({"exp", "abs"})
REDUCTIONS = frozenset({"reduce_max", "reduce_sum"})
COMPARE_MODES = ("gt", "ge", "lt", "le", "eq", "ne")
VECTOR_KINDS = (ELEMENTWISE_BINARY | ELEMENTWISE_SCALAR | ELEMENTWISE_UNARY | REDUCTIONS
                | {"compare", "cast", "split_fp16", "fill", "random", "axpy", "mla", "quantize", "dequantize", "lut"})
VECTOR_SPACE = "UB"


def _fail(cls: type[HwError], op: Op, msg: str) -> HwError:
    return cls(f"{op.kind}: {msg}")


# ---------------------------------------------------------------- alignment
def check_alignment(view: View, machine: MachineSpec, op: Op) -> None:
    """On-chip views must start on the memory's alignment (and fractal rows for L0*)."""
    if view.space == "GM":
        return
    mem = machine.memories[view.space]
    col_off_bits = view.offset[-1] * BITS[view.dtype]
    if col_off_bits % (8 * mem.alignment_bytes):
        raise _fail(AlignmentError, op, f"{view.space} view starts {col_off_bits / 8:g} B into its row; "
                    f"{view.space} needs {mem.alignment_bytes}-B alignment (start the column slice at a "
                    f"multiple of {mem.alignment_bytes * 8 // BITS[view.dtype]} {view.dtype} elements)")
    if mem.fractal_rows > 1 and len(view.offset) >= 2 and view.offset[-2] % mem.fractal_rows:
        raise _fail(AlignmentError, op, f"{view.space} view starts at row {view.offset[-2]}; {view.space} is "
                    f"stored in {mem.fractal_rows}-row fractals (start at a multiple of {mem.fractal_rows})")


# ---------------------------------------------------------------- per-kind rules
def check_op(op: Op, machine: MachineSpec) -> None:
    """Every rule of the op: operand counts and ranks, parameters, then its kind's rules. The
    recorder and the trusted validation of a received trace both call this, so an op that
    passes is one the replay and the timing engine can compute."""
    check = _CHECKS.get(op.kind)
    if check is None:
        raise HwError(f"unknown op kind {op.kind!r}")
    n_dst, n_src = ARITY[op.kind]
    if len(op.dst) != n_dst or len(op.src) != n_src:
        raise _fail(ShapeError, op, f"takes {n_dst} destination(s) and {n_src} source(s), "
                    f"got {len(op.dst)} and {len(op.src)}")
    if op.kind in VECTOR_KINDS or op.kind == "mma":
        for v in op.dst + op.src:
            if not 1 <= len(v.shape) <= 2:
                raise _fail(ShapeError, op, f"operates on 1-D or 2-D views, got shape {v.shape} "
                            "(index the leading dimensions away: t[b, h] is 2-D)")
    _check_params(op)
    check(op, machine)


def check_op_once(op: Op, machine: MachineSpec, passed: set) -> None:
    """check_op, skipped for a copy whose rule inputs equal those of one that passed (`passed`
    is the caller's memo). A copy's rules read its arity and parameters, the spaces, dtypes
    and shapes of its views and, on chip, where the view starts in its row and fractal
    (check_alignment); a GM view's offset is not a rule of the op (bounds are the view's),
    and GM copies of one tile shape differ in nothing else."""
    if op.kind != "copy":
        check_op(op, machine)
        return
    key = (op.params, len(op.dst), len(op.src), *[
        (v.space, v.dtype, v.shape) if v.space == "GM" else (v.space, v.dtype, v.shape, v.offset[-1],
                                                              v.offset[-2] if len(v.offset) >= 2 else None)
        for v in op.dst + op.src])
    if key not in passed:
        check_op(op, machine)
        passed.add(key)


# ---------------------------------------------------------------- operands and parameters
ARITY = {"copy": (1, 1), "mma": (1, 2), "barrier": (0, 0), "cast": (1, 1), "split_fp16": (2, 1), "fill": (1, 0),
         "random": (1, 0), "axpy": (1, 2), "mla": (1, 3), "compare": (1, 2), "quantize": (1, 2),
         "dequantize": (1, 3), "lut": (1, 1),
         **{k: (1, 2) for k in ("add", "sub", "mul", "div", "max", "min")},
         **{k: (1, 1) for k in ("adds", "muls", "maxs", "exp", "abs", "reduce_max", "reduce_sum")}}
MAX_LUT_SEGMENTS = 64


def _is_float(x) -> bool:
    return type(x) is float


def _check_params(op: Op) -> None:
    """Parameters exactly as the DSL records them (a forged trace may carry anything)."""
    kind, p = op.kind, op.params
    if kind in ("copy", "barrier", "cast", "exp", "abs", "add", "sub", "mul", "div", "max", "min", "reduce_max",
                "reduce_sum", "quantize", "dequantize", "mla"):
        ok = p == ()
    elif kind == "mma":
        ok = len(p) == 2 and all(type(x) is bool for x in p)
    elif kind in ("fill", "adds", "muls", "maxs", "axpy"):
        ok = len(p) == 1 and _is_float(p[0])
    elif kind == "split_fp16":
        ok = len(p) == 1 and type(p[0]) is int and 0 <= p[0] <= 24
    elif kind == "compare":
        ok = len(p) == 1 and p[0] in COMPARE_MODES
    elif kind == "random":
        ok = len(p) == 3 and type(p[1]) is tuple and type(p[2]) is tuple   # values: _check_random
    elif kind == "lut":
        ok = len(p) == 3 and all(type(t) is tuple and all(_is_float(x) and not math.isnan(x) for x in t) for t in p)
        if ok:
            bp, sl, ic = p
            ok = 1 <= len(bp) <= MAX_LUT_SEGMENTS and len(sl) == len(ic) == len(bp) + 1 and list(bp) == sorted(bp)
    else:
        ok = False
    if not ok:
        raise _fail(ParamError, op, f"parameters {p!r} are not what the DSL records for {kind}")


def _check_copy(op: Op, machine: MachineSpec) -> None:
    (dst,), (src,) = op.dst, op.src
    path = machine.path(src.space, dst.space)
    if path is None:
        legal = sorted(f"{p.src}->{p.dst}" for p in machine.paths)
        raise _fail(PathError, op, f"there is no data path {src.space}->{dst.space} on {machine.name}; "
                    f"paths that exist: {', '.join(legal)}")
    if src.dtype != dst.dtype:
        raise _fail(DtypeError, op, f"{src.space}->{dst.space} copies do not convert: source is {src.dtype}, "
                    f"destination {dst.dtype} (convert with k.cast on the vector unit)")
    if src.shape != dst.shape:
        raise _fail(ShapeError, op, f"source shape {src.shape} != destination shape {dst.shape} "
                    "(slice the buffer to the source's shape at ragged edges: buf[:m, :n])")
    check_alignment(src, machine, op)
    check_alignment(dst, machine, op)


def mma_dims(op: Op) -> tuple[int, int, int]:
    acc, = op.dst
    a, b = op.src
    (m, k), transpose_b = a.shape, op.params[1]
    n = b.shape[0] if transpose_b else b.shape[1]
    return m, n, k


def _check_mma(op: Op, machine: MachineSpec) -> None:
    acc, = op.dst
    a, b = op.src
    for view, space, role in ((acc, "L0C", "accumulator"), (a, "L0A", "left operand"), (b, "L0B", "right operand")):
        if view.space != space:
            raise _fail(PathError, op, f"the cube reads its {role} from {space}, got a {view.space} view "
                        f"(copy it to {space} first)")
        if len(view.shape) != 2:
            raise _fail(ShapeError, op, f"{role} must be 2-D, got shape {view.shape}")
    mode = machine.cube.modes.get(a.dtype)
    if a.dtype != b.dtype or mode is None:
        raise _fail(DtypeError, op, f"cube inputs are {a.dtype} x {b.dtype}; {machine.name}'s cube takes "
                    f"matching pairs of {', '.join(machine.cube.modes)}")
    if acc.dtype != mode.acc_dtype:
        raise _fail(DtypeError, op, f"{a.dtype} products accumulate in {mode.acc_dtype}, "
                    f"accumulator is {acc.dtype}")
    transpose_b = op.params[1]
    m, k = a.shape
    kb, n = (b.shape[1], b.shape[0]) if transpose_b else b.shape
    if kb != k or acc.shape != (m, n):
        bt = "b^T" if transpose_b else "b"
        raise _fail(ShapeError, op, f"a {a.shape} @ {bt} {(kb, n)} does not match accumulator {acc.shape} "
                    f"(need a (M,K), {bt} (K,N), acc (M,N))")


def _broadcastable(src: tuple[int, ...], dst: tuple[int, ...]) -> bool:
    """Equal ranks with equal or size-1 dimensions, or a single element of any rank up to dst's."""
    if len(src) != len(dst):
        return prod(src) == 1 and len(src) <= len(dst)
    return all(s == d or s == 1 for s, d in zip(src, dst))


def _check_vector(op: Op, machine: MachineSpec) -> None:
    kind = op.kind
    for v in op.dst + op.src:
        if v.space != VECTOR_SPACE:
            raise _fail(PathError, op, f"vector ops work on UB; got a {v.space} view "
                        f"(move data to UB with k.copy first)")
        check_alignment(v, machine, op)
    dst = op.dst[0]
    if kind in REDUCTIONS:
        (src,) = op.src
        rows, cols = src.shape if len(src.shape) == 2 else (1, src.shape[0])
        if dst.shape not in ((rows, 1), (1, cols)):
            raise _fail(ShapeError, op, f"reducing {src.shape} gives ({rows}, 1) (per row) or (1, {cols}) "
                        f"(per column); destination is {dst.shape}")
    else:
        for s in op.src:
            if not _broadcastable(s.shape, dst.shape):
                raise _fail(ShapeError, op, f"operand shape {s.shape} does not broadcast to the "
                            f"destination shape {dst.shape} (equal or size-1 dimensions only)")
        for d in op.dst[1:]:
            if d.shape != dst.shape:
                raise _fail(ShapeError, op, f"outputs have different shapes {dst.shape} and {d.shape}")
    _check_vector_dtypes(op)


def _check_vector_dtypes(op: Op) -> None:
    kind, dst = op.kind, op.dst[0]
    srcs = [s.dtype for s in op.src]
    if kind == "split_fp16":
        hi, lo = op.dst
        if srcs[0] != "fp32" or hi.dtype not in ("fp16", "bf16") or lo.dtype != hi.dtype:
            raise _fail(DtypeError, op, f"splits fp32 into two fp16 (or bf16) halves; got {srcs[0]} -> "
                        f"{hi.dtype}, {lo.dtype}")
    elif kind == "quantize":
        if dst.dtype not in ("int8", "int4", "int16") or srcs[0] not in FLOATS or srcs[1] != "fp32":
            raise _fail(DtypeError, op, f"quantize takes a float source and fp32 scales into int8/int4/int16; "
                        f"got {srcs[0]} (scale {srcs[1]}) -> {dst.dtype}")
    elif kind == "dequantize":
        if srcs[0] not in INTS or dst.dtype != "fp32" or any(s != "fp32" for s in srcs[1:]):
            raise _fail(DtypeError, op, f"dequantize takes an integer source and fp32 scales into fp32; "
                        f"got {srcs[0]} -> {dst.dtype} with scales {srcs[1:]}")
    elif kind == "random":
        _check_random(op)
    elif kind == "compare":
        if len(op.params) != 1 or op.params[0] not in COMPARE_MODES:
            raise _fail(HwError, op, f"mode must be one of {', '.join(COMPARE_MODES)}, got {op.params!r}")
        if dst.dtype not in FLOATS or srcs[0] != srcs[1]:
            raise _fail(DtypeError, op, f"compares two operands of one dtype into a float 0/1 mask; got "
                        f"{srcs[0]} vs {srcs[1]} -> {dst.dtype} (convert with k.cast)")
    elif kind == "cast":
        pass  # any supported pair; rounding is round-to-nearest-even with saturation for ints
    elif kind in ("add", "sub", "max", "min", "adds", "maxs", "fill", "reduce_sum", "reduce_max"):
        if any(s != dst.dtype for s in srcs):
            raise _fail(DtypeError, op, f"operands must share the destination dtype {dst.dtype}; got {srcs} "
                        "(convert with k.cast)")
    else:  # float-only arithmetic: mul, div, muls, axpy, mla, exp, abs, lut
        if dst.dtype not in FLOATS or any(s != dst.dtype for s in srcs):
            raise _fail(DtypeError, op, f"needs float operands of one dtype; destination {dst.dtype}, "
                        f"sources {srcs} (convert with k.cast)")


def _check_random(op: Op) -> None:
    dst = op.dst[0]
    if dst.dtype not in FLOATS:
        raise _fail(DtypeError, op, f"fills a float buffer, got {dst.dtype} (generate in fp32, then k.cast)")
    if op.src or len(op.params) != 3:
        raise _fail(ShapeError, op, "takes a destination and (seed, origin, tensor_shape) only")
    seed, origin, shape = op.params
    if type(seed) is not int or not 0 <= seed < 2**32:
        raise _fail(HwError, op, f"seed must be an int in 0..2**32-1, got {seed!r}")
    extent = dst.extent
    if (len(origin) != len(extent) or len(shape) != len(extent)
            or any(type(x) is not int for x in (*origin, *shape))
            or any(o < 0 or o + e > s for o, e, s in zip(origin, extent, shape))
            or prod(shape) >= 2**62):
        raise _fail(ShapeError, op, f"the block at origin {tuple(origin)} of extent {extent} must lie inside "
                    f"the logical tensor of shape {tuple(shape)} (one coordinate per dimension of the view)")


_CHECKS = {"copy": _check_copy, "mma": _check_mma, "barrier": lambda op, machine: None,
           **{kind: _check_vector for kind in VECTOR_KINDS}}


# ---------------------------------------------------------------- static cost
def is_gm_transfer(op: Op) -> bool:
    return op.kind == "copy" and (op.src[0].space == "GM" or op.dst[0].space == "GM")


def static_cost(op: Op, machine: MachineSpec) -> tuple[str, float, float]:
    """(pipe, busy cycles, extra latency cycles) of an op that does not touch GM."""
    kind = op.kind
    if kind == "copy":
        (dst,), (src,) = op.dst, op.src
        path = machine.path(src.space, dst.space)
        return path.pipe, path.setup_cycles + ceil(dst.nbytes / path.bytes_per_cycle), path.latency_cycles
    if kind == "mma":
        a = op.src[0]
        mode = machine.cube.modes[a.dtype]
        m, n, k = mma_dims(op)
        cycles = ceil(m / mode.m) * ceil(n / mode.n) * ceil(k / mode.k)
        return "M", machine.cube.startup_cycles + cycles, 0
    if kind in VECTOR_KINDS:
        vec = machine.vector
        nbytes = max(v.nbytes for v in op.dst + op.src)
        repeats = ceil(nbytes / vec.bytes_per_cycle)
        passes = vec.op_passes.get(kind, 1.0)
        return "V", ceil(passes * repeats) + vec.startup_cycles * ceil(repeats / vec.max_repeat), 0
    if kind == "barrier":
        return "S", 0, 0
    raise HwError(f"unknown op kind {kind!r}")

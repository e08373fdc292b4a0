"""Trace <-> bytes, for moving a sandboxed kernel's trace to the trusted process.

No pickle (unpickling untrusted bytes runs code): a JSON header plus int64 tables of the
distinct views, the distinct ops with their operand lists, and each core's sequence of
op ids. Decoding builds plain records; the caller must still run
`hwmodel.validate.validate_trace` on the result.
"""
from __future__ import annotations

import json
import struct

import numpy as np

from hwmodel.dsl import Trace
from hwmodel.dtypes import BITS
from hwmodel.ops import Op
from hwmodel.views import BufferDecl, TensorDecl, View

MAX_RANK = 6
_DTYPES = list(BITS)
_VIEW_COLS = 5 + 3 * MAX_RANK
_DTYPE_ROW = {d: i for i, d in enumerate(_DTYPES)}
_PADS = [(0,) * (MAX_RANK - r) for r in range(MAX_RANK + 1)]


class _KeepRow(dict):
    """keep flags -> their 0/1 columns, built once per distinct tuple."""

    def __missing__(self, keep: tuple) -> tuple:
        row = self[keep] = tuple(int(k) for k in keep)
        return row


_KEEP_ROW = _KeepRow()


class CodecError(ValueError):
    """The bytes are not a well-formed trace."""


def encode(trace: Trace) -> bytes:
    spaces: dict[str, int] = {}
    kinds: dict[str, int] = {}
    params: dict[tuple, int] = {}
    view_rows: dict[int, int] = {}
    views: list[tuple[int, ...]] = []
    op_rows: dict[int, int] = {}
    ops: list[tuple[int, ...]] = []
    operands: list[int] = []

    def view_row(v: View) -> int:
        row = view_rows.get(id(v))
        if row is None:
            rank = len(v.offset)
            if rank > MAX_RANK:
                raise CodecError(f"views of rank {rank} are not supported (max {MAX_RANK})")
            pad = _PADS[rank]
            row = view_rows[id(v)] = len(views)
            views.append((spaces.setdefault(v.space, len(spaces)), v.base, v.slot, _DTYPE_ROW[v.dtype], rank,
                          *v.offset, *pad, *v.extent, *pad, *_KEEP_ROW[v.keep], *pad))
        return row

    for op in trace.distinct_ops():
        op_rows[id(op)] = len(ops)
        ops.append((kinds.setdefault(op.kind, len(kinds)), op.line, params.setdefault(op.params, len(params)),
                    len(op.dst), len(op.src)))
        operands.extend(view_row(v) for v in op.dst + op.src)
    if trace.op_ids is not None:   # the per-core sequences are id arrays already: renumber them
        renumber = np.full(len(trace.op_table) + 1, -1, np.int64)
        for i, op in enumerate(trace.op_table):
            renumber[i] = op_rows.get(id(op), -1)
        sequences = [renumber[np.asarray(ids, np.int64)] for ids in trace.op_ids]
    else:
        sequences = [np.fromiter((op_rows[id(op)] for op in core_ops), np.int64, len(core_ops))
                     for core_ops in trace.ops]
    header = {
        "machine": trace.machine,
        "tensors": [[t.id, t.name, list(t.shape), t.dtype, t.role] for t in trace.tensors],
        "buffers": [[[b.id, b.space, list(b.shape), b.dtype, b.count, b.name] for b in core] for core in trace.buffers],
        "spaces": list(spaces), "kinds": list(kinds), "params": [list(p) for p in params],
    }
    tables = [np.asarray(views, np.int64).reshape(-1, _VIEW_COLS), np.asarray(ops, np.int64).reshape(-1, 5),
              np.asarray(operands, np.int64), *sequences]
    head = json.dumps(header).encode()
    parts = [struct.pack("<QQ", len(head), len(tables)), head]
    for t in tables:
        raw = t.tobytes()
        parts += [struct.pack("<Q", len(raw)), raw]
    return b"".join(parts)


def decode(blob: bytes) -> Trace:
    """The trace in `blob`, or CodecError: every field has the type and range the encoder
    writes, every index points into its table, and no bytes are left over."""
    try:
        return _decode(memoryview(blob))
    except CodecError:
        raise
    except (ValueError, KeyError, IndexError, TypeError, struct.error, RecursionError, OverflowError) as exc:
        raise CodecError(f"malformed trace: {type(exc).__name__}") from None


def _need(ok: bool, what: str) -> None:
    if not ok:
        raise CodecError(f"malformed trace: {what}")


def _ints(x, n: int | None = None) -> bool:
    return type(x) is list and (n is None or len(x) == n) and all(type(i) is int for i in x)


def _decode(buf: memoryview) -> Trace:
    n, n_tables = struct.unpack_from("<QQ", buf, 0)
    _need(16 + n <= len(buf) and n_tables >= 3, "header size")
    header = json.loads(bytes(buf[16:16 + n]))
    _need(type(header) is dict and set(header) == {"machine", "tensors", "buffers", "spaces", "kinds", "params"},
          "header fields")
    pos = 16 + n
    tables = []
    for _ in range(n_tables):
        (nbytes,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        _need(nbytes % 8 == 0 and pos + nbytes <= len(buf), "table size")
        tables.append(np.frombuffer(buf[pos:pos + nbytes], np.int64))
        pos += nbytes
    _need(pos == len(buf), "trailing bytes")
    views_t, ops_t, operands, *sequences = tables
    spaces, kinds, params = header["spaces"], header["kinds"], header["params"]
    _need(all(type(x) is list and all(type(i) is str for i in x) for x in (spaces, kinds)), "names")
    _need(type(params) is list and all(type(p) is list for p in params), "params")
    _need(type(header["machine"]) is str, "machine")
    params = [_tuples(p) for p in params]
    _need(views_t.size % _VIEW_COLS == 0 and ops_t.size % 5 == 0, "table shapes")
    views = _views(views_t.reshape(-1, _VIEW_COLS), spaces)
    distinct = _ops(ops_t.reshape(-1, 5), operands, views, kinds, params)
    _need(type(header["tensors"]) is list and all(
        type(t) is list and len(t) == 5 and type(t[0]) is int and type(t[1]) is str and _ints(t[2])
        and type(t[3]) is str and type(t[4]) is str for t in header["tensors"]), "tensors")
    tensors = tuple(TensorDecl(i, name, tuple(shape), dtype, role) for i, name, shape, dtype, role in header["tensors"])
    _need(type(header["buffers"]) is list and all(type(core) is list and all(
        type(b) is list and len(b) == 6 and type(b[0]) is int and type(b[1]) is str and _ints(b[2])
        and type(b[3]) is str and type(b[4]) is int and type(b[5]) is str for b in core) for core in header["buffers"]),
        "buffers")
    buffers = tuple(tuple(BufferDecl(i, space, tuple(shape), dtype, count, name)
                          for i, space, shape, dtype, count, name in core) for core in header["buffers"])
    if len(sequences) != len(buffers):
        raise CodecError(f"{len(sequences)} op sequences for {len(buffers)} cores")
    for seq in sequences:
        _need(seq.size == 0 or (int(seq.min()) >= 0 and int(seq.max()) < len(distinct)), "op index")
    return Trace.from_arrays(header["machine"], tensors, buffers, tuple(distinct), tuple(sequences))


def _views(rows: np.ndarray, spaces: list[str]) -> list[View]:
    """The view table: every field checked on the whole table at once, then one View per row."""
    space, base, slot, dtype, rank = (rows[:, i] for i in range(5))
    _need(bool(((0 <= space) & (space < len(spaces)) & (0 <= dtype) & (dtype < len(_DTYPES)) & (0 <= rank)
                & (rank <= MAX_RANK) & (0 <= base) & (base < 2**31) & (0 <= slot) & (slot < 2**20)).all()),
          "view fields")
    views = []
    for row in rows.tolist():
        r = row[4]
        views.append(View(spaces[row[0]], row[1], row[2], tuple(row[5:5 + r]),
                          tuple(row[5 + MAX_RANK:5 + MAX_RANK + r]),
                          tuple([k != 0 for k in row[5 + 2 * MAX_RANK:5 + 2 * MAX_RANK + r]]), _DTYPES[row[3]]))
    return views


def _ops(rows: np.ndarray, operands: np.ndarray, views: list[View], kinds: list[str], params: list) -> list[Op]:
    """The op table: fields and operand indices checked on the whole table at once, then one Op per row."""
    kind, param, n_dst, n_src = rows[:, 0], rows[:, 2], rows[:, 3], rows[:, 4]
    _need(bool(((0 <= kind) & (kind < len(kinds)) & (0 <= param) & (param < len(params)) & (0 <= n_dst)
                & (n_dst <= 4) & (0 <= n_src) & (n_src <= 4)).all()), "op fields")
    _need(int((n_dst + n_src).sum()) == len(operands), "operand count")
    _need(operands.size == 0 or (int(operands.min()) >= 0 and int(operands.max()) < len(views)), "operand index")
    picked = list(map(views.__getitem__, operands.tolist()))
    ops, at = [], 0
    for k, line, p, nd, ns in rows.tolist():
        ops.append(Op(kinds[k], tuple(picked[at:at + nd]), tuple(picked[at + nd:at + nd + ns]), params[p], line))
        at += nd + ns
    return ops


def _tuples(x):
    """JSON turned tuples into lists; op params are tuples (of tuples, for lut tables)."""
    return tuple(_tuples(i) for i in x) if isinstance(x, list) else x

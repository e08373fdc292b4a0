"""Check a trace that came from somewhere untrusted (a sandboxed kernel) before using it.

The recorder already enforces every rule as ops are issued; this re-derives the same
facts from the trace alone, as a complete program: its tensors are the task's arguments
plus bounded workspaces, every buffer is a legal allocation within capacity, every op is
legal (operands, parameters, ranks: what the replay and timing can compute), no GM
writes to inputs, the op and barrier counts within hwmodel.limits. A forged trace can
then claim nothing an honest kernel could not do.
"""
from __future__ import annotations

from math import prod

import numpy as np
from typing import Sequence

from hwmodel.dsl import Trace, check_name, slot_bytes, tensor_bytes
from hwmodel.dtypes import BITS
from hwmodel.errors import BoundsError, CapacityError, HwError, LimitError
from hwmodel.limits import (MAX_BUFFERS_PER_CORE, MAX_OPS, MAX_OPS_PER_CORE, MAX_VIEW_RANK, MAX_WORKSPACE_BYTES,
                            MAX_WORKSPACES)
from hwmodel.ops import Op, check_op_once
from hwmodel.spec import MachineSpec
from hwmodel.views import BufferDecl, TensorDecl, View


def validate_trace(trace: Trace, machine: MachineSpec, args: Sequence[TensorDecl] | None = None) -> None:
    """Raise HwError unless `trace` is a legal program on `machine`; with `args` (the task's
    declared arguments), its tensors must be exactly those arguments followed by workspaces."""
    if trace.machine != machine.name:
        raise HwError(f"trace was recorded for {trace.machine!r}, not {machine.name!r}")
    if len(trace.ops) != machine.num_cores or len(trace.buffers) != machine.num_cores:
        raise HwError(f"trace has {len(trace.ops)} cores, {machine.name} has {machine.num_cores}")
    _check_tensors(trace.tensors, args)
    total = trace.num_ops
    if total > MAX_OPS:
        raise LimitError(f"the kernel issued {total:,} ops; the limit is {MAX_OPS:,} (use larger tiles)")
    tensors = {t.id: t for t in trace.tensors}
    barriers = set()
    checked: set[tuple[int, int]] = set()   # identical ops are one object: check each once per buffer table
    rules_passed: set = set()                # copies' rule inputs that passed (see check_op_once)
    tables: dict[tuple, int] = {}
    ids = trace.op_ids
    if ids is not None:   # a decoded trace: visit each core's distinct ops once, count barriers on arrays
        if len(ids) != len(trace.ops) or any(len(i) != len(o) for i, o in zip(ids, trace.ops)):
            raise HwError("the trace's op tables do not match its op sequences")
        barrier = np.array([type(op) is Op and op.kind == "barrier" for op in trace.op_table] + [False], bool)
    for core, (buffers, ops) in enumerate(zip(trace.buffers, trace.ops)):
        if len(ops) > MAX_OPS_PER_CORE:
            raise LimitError(f"core {core} issued {len(ops):,} ops; the limit is {MAX_OPS_PER_CORE:,} per core "
                          "(use larger tiles)")
        table = tables.get(buffers)
        if table is None:
            by_id = _check_buffers(core, buffers, machine)
            table = tables[buffers] = len(tables)
        else:
            by_id = {d.id: d for d in buffers}
        if ids is not None:
            core_ids = np.asarray(ids[core])
            visit = map(trace.op_table.__getitem__, np.flatnonzero(np.bincount(core_ids)).tolist())
            n_barriers = int(barrier[core_ids].sum())
        else:
            visit, n_barriers = ops, sum(1 for op in ops if type(op) is Op and op.kind == "barrier")
        for op in visit:
            if (id(op), table) in checked:
                continue
            checked.add((id(op), table))
            if type(op) is not Op:
                raise HwError(f"core {core}: {type(op).__name__} is not an op")
            for v in op.dst + op.src:
                if (id(v), table) not in checked:   # views are shared by the ops that use them: check each once
                    _check_view(v, tensors, by_id)
                    checked.add((id(v), table))
            for v in op.dst:
                if v.space == "GM" and tensors[v.base].role == "input":
                    raise HwError(f"{op.kind}: writes GM tensor {tensors[v.base].name!r}, which is an input "
                                  "(inputs are read-only; write results to the output or a k.workspace)")
            check_op_once(op, machine, rules_passed)
        barriers.add(n_barriers)
    if len(barriers) > 1:
        raise HwError(f"barrier: cores reach different numbers of barriers ({sorted(barriers)})")


def _check_tensors(tensors: tuple[TensorDecl, ...], args: Sequence[TensorDecl] | None) -> None:
    n = len(args) if args is not None else sum(1 for t in tensors if t.role != "workspace")
    if args is not None and tuple(tensors[:n]) != tuple(args):
        raise HwError("the trace's tensors are not the task's arguments "
                      f"({', '.join(_describe(t) for t in tensors[:n])} vs {', '.join(_describe(t) for t in args)})")
    workspaces = tensors[n:]
    if len(workspaces) > MAX_WORKSPACES:
        raise CapacityError(f"{len(workspaces)} workspaces; at most {MAX_WORKSPACES}")
    for i, t in enumerate(tensors):
        if type(t) is not TensorDecl or t.id != i or not _legal_shape(t.shape) or t.dtype not in BITS:
            raise HwError(f"GM tensor #{i} is not a legal declaration")
        if i >= n and (t.role != "workspace" or type(t.name) is not str):
            raise HwError(f"GM tensor #{i} after the arguments must be a workspace")
        if i >= n:
            check_name("workspace", t.name)
    total = sum(tensor_bytes(t) for t in workspaces)
    if total > MAX_WORKSPACE_BYTES:
        raise CapacityError(f"{total:,} B of GM workspaces, at most {MAX_WORKSPACE_BYTES:,} B per kernel")


def _check_buffers(core: int, buffers: tuple[BufferDecl, ...], machine: MachineSpec) -> dict[int, BufferDecl]:
    if len(buffers) > MAX_BUFFERS_PER_CORE:
        raise CapacityError(f"core {core}: {len(buffers)} buffers, at most {MAX_BUFFERS_PER_CORE}")
    used = dict.fromkeys(machine.memories, 0)
    for i, d in enumerate(buffers):
        if (type(d) is not BufferDecl or d.id != i or d.space not in machine.memories or not _legal_shape(d.shape)
                or d.dtype not in BITS or type(d.count) is not int or d.count < 1):
            raise HwError(f"core {core}: buffer #{i} is not a legal allocation")
        check_name("alloc", d.name)
        used[d.space] += slot_bytes(machine, d.space, d.shape, d.dtype) * d.count
    for space, nbytes in used.items():
        cap = machine.memories[space].capacity_bytes
        if nbytes > cap:
            raise CapacityError(f"{space}: {nbytes:,} B allocated on core {core}, {cap:,} B capacity")
    return {d.id: d for d in buffers}


def _legal_shape(shape) -> bool:
    return (type(shape) is tuple and 1 <= len(shape) <= MAX_VIEW_RANK
            and all(type(s) is int and s > 0 for s in shape) and prod(shape) < 2**40)


def _describe(t: TensorDecl) -> str:
    return f"{t.name} {t.shape} {t.dtype} {t.role}" if type(t) is TensorDecl else repr(type(t).__name__)


def _check_view(v: View, tensors: dict, buffers: dict) -> None:
    if type(v) is not View:
        raise HwError(f"operand {type(v).__name__} is not a view")
    if v.space == "GM":
        decl = tensors.get(v.base)
        shape, dtype, what = (decl.shape, decl.dtype, f"GM tensor {decl.name!r}") if decl else (None, None, "")
        slots = 1
    else:
        decl = buffers.get(v.base)
        shape, dtype, what = (decl.shape, decl.dtype, f"{decl.space} buffer {decl.name!r}") if decl else (None, None, "")
        slots = decl.count if decl else 0
        if decl and decl.space != v.space:
            raise HwError(f"view claims memory {v.space} but {what} is in {decl.space}")
    if decl is None:
        raise HwError(f"view refers to {v.space} #{v.base}, which was never allocated")
    if dtype != v.dtype or not 0 <= v.slot < slots:
        raise HwError(f"view of {what} has dtype {v.dtype} / slot {v.slot}; the buffer is {dtype} x{slots}")
    if len(v.offset) != len(shape) or len(v.extent) != len(shape) or len(v.keep) != len(shape):
        raise BoundsError(f"view of {what} has rank {len(v.offset)}, the buffer has rank {len(shape)}")
    for o, e, s in zip(v.offset, v.extent, shape):
        if o < 0 or e < 1 or o + e > s:
            raise BoundsError(f"view {v.describe()} lies outside {what} of shape {shape}")
    if v.shape != tuple(e for e, k in zip(v.extent, v.keep) if k):
        raise HwError(f"view of {what} has an inconsistent shape")

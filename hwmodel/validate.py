"""Check a trace that came from somewhere untrusted (a sandboxed kernel) before using it.

The recorder already enforces every rule as ops are issued; this re-derives the same
facts from the trace alone: views inside their buffers with the buffer's dtype and
memory, allocations within capacity, every op legal, no GM writes to inputs, the same
number of barriers on every core.
"""
from __future__ import annotations

from hwmodel.dsl import Trace, slot_bytes
from hwmodel.errors import BoundsError, CapacityError, HwError
from hwmodel.limits import MAX_OPS_PER_CORE
from hwmodel.ops import check_op
from hwmodel.spec import MachineSpec
from hwmodel.views import View


def validate_trace(trace: Trace, machine: MachineSpec) -> None:
    if trace.machine != machine.name:
        raise HwError(f"trace was recorded for {trace.machine!r}, not {machine.name!r}")
    if len(trace.ops) != machine.num_cores or len(trace.buffers) != machine.num_cores:
        raise HwError(f"trace has {len(trace.ops)} cores, {machine.name} has {machine.num_cores}")
    tensors = {t.id: t for t in trace.tensors}
    barriers = set()
    checked: set[tuple[int, int]] = set()   # identical ops are one object: check each once per buffer table
    tables: dict[tuple, int] = {}
    for core, (buffers, ops) in enumerate(zip(trace.buffers, trace.ops)):
        if len(ops) > MAX_OPS_PER_CORE:
            raise HwError(f"core {core} issued {len(ops):,} ops; the limit is {MAX_OPS_PER_CORE:,} per core "
                          "(use larger tiles)")
        used = dict.fromkeys(machine.memories, 0)
        by_id = {}
        for d in buffers:
            if d.space not in machine.memories:
                raise HwError(f"core {core}: buffer {d.name!r} in unknown memory {d.space!r}")
            used[d.space] += slot_bytes(machine, d.space, d.shape, d.dtype) * d.count
            by_id[d.id] = d
        for space, nbytes in used.items():
            cap = machine.memories[space].capacity_bytes
            if nbytes > cap:
                raise CapacityError(f"{space}: {nbytes:,} B allocated on core {core}, {cap:,} B capacity")
        table = tables.setdefault(buffers, len(tables))
        for op in ops:
            if (id(op), table) in checked:
                continue
            checked.add((id(op), table))
            for v in op.dst + op.src:
                _check_view(v, tensors, by_id)
            for v in op.dst:
                if v.space == "GM" and tensors[v.base].role == "input":
                    raise HwError(f"{op.kind}: writes GM tensor {tensors[v.base].name!r}, which is an input "
                                  "(inputs are read-only; write results to the output or a k.workspace)")
            check_op(op, machine)
        barriers.add(sum(1 for op in ops if op.kind == "barrier"))
    if len(barriers) > 1:
        raise HwError(f"barrier: cores reach different numbers of barriers ({sorted(barriers)})")


def _check_view(v: View, tensors: dict, buffers: dict) -> None:
    if not isinstance(v, View):
        raise HwError(f"operand {v!r} is not a view")
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

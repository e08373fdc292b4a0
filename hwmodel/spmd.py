"""Recording every core in one run of the kernel's Python (the fast path of record_trace).

At a benchmark shape every core of a typical kernel runs the same program up to the GM
offsets of its tiles, yet recording core by core runs the kernel's Python once per core.
Here it runs once: the core id is a per-core value (hwmodel.corevals), `k.tiles` and
`k.share` hand out per-core tiles, slicing a tensor at per-core offsets gives a `CoreView`
(one view per core), and an op with such an operand is one op per core. Ops whose operands
are the same on every core (most of a GEMM: everything on chip) are recorded once.

The result is exact, never a guess: a value the kernel needs as one value (a branch, a
loop bound, a list index) is given only when every core agrees, otherwise the run diverges
and the caller records core by core (hwmodel.dsl.record_trace). So is any exception, so a
failing kernel reports exactly what the core-by-core recording says. Kernels whose bytecode
compares identities other than with None, or uses `match` (its class patterns call the
real isinstance), are recorded core by core without trying.
"""
from __future__ import annotations

import builtins
import dis
import operator
import sys
from itertools import repeat
from types import CodeType

import numpy as np

from hwmodel.corevals import Cores, CoreVal, Diverged, at, force_isinstance, lift
from hwmodel.dsl import Kernel, _Shared, tile_share
from hwmodel.ops import Op
from hwmodel.views import View

_getframe = sys._getframe


def refusal(code: CodeType) -> str:
    """Why the module's code cannot be recorded all cores at once ('' if it can)."""
    previous = None
    for ins in dis.get_instructions(code):
        if ins.opname == "IS_OP" and not (previous is not None and previous.opname == "LOAD_CONST"
                                          and previous.argval is None):
            return f"line {ins.positions.lineno}: an identity comparison ('is') with something other than None"
        if ins.opname.startswith("MATCH_"):
            return f"line {ins.positions.lineno}: a match statement"
        previous = ins
    for const in code.co_consts:
        if isinstance(const, CodeType):
            why = refusal(const)
            if why:
                return why
    return ""


def slice_views(cores: Cores, views: tuple[View, ...], key) -> View | "CoreView":
    """Each core's view sliced with its own index."""
    try:
        if type(key) is tuple and len(key) == 2 and type(key[0]) is slice and type(key[1]) is slice:
            k0, k1 = key   # the common 2-D slice: each core's bounds column by column
            bounds = [x._v if type(x) is CoreVal else repeat(x)
                      for x in (k0.start, k0.stop, k0.step, k1.start, k1.stop, k1.step)]
            out = tuple(v[slice(a, b, c), slice(d, e, f)] for v, a, b, c, d, e, f in zip(views, *bounds))
        else:
            out = tuple(v[at(key, c)] for c, v in enumerate(views))
    except Exception as exc:   # some core's slice is out of range: it raises there, alone
        cores.diverge(f"slicing raised {type(exc).__name__}")
    return lift_views(cores, out)


def lift_views(cores: Cores, views: tuple) -> View | "CoreView":
    first = views[0]
    for v in views:
        if v is not first:
            return CoreView(cores, views)
    return first


def _attribute(name: str):
    def get(self):
        values = tuple(getattr(v, name) for v in self._views)
        if type(values[0]) is tuple:
            if len({len(t) for t in values}) != 1:
                self._c.diverge(f"view.{name} of per-core views")
            return tuple(lift(self._c, column) for column in zip(*values))
        return lift(self._c, values)
    return property(get)


def _refused(name: str):
    def method(self, *args, **kwargs):
        self._c.diverge(f"{name} of a per-core view")
    return method


class CoreView:
    """One view per core (a tensor sliced at per-core offsets): what a kernel holds where it
    would hold its own core's view. Reads of view attributes give per-core values."""

    __slots__ = ("_views", "_c")

    def __init__(self, cores: Cores, views: tuple[View, ...]):
        object.__setattr__(self, "_c", cores)
        object.__setattr__(self, "_views", views)

    space, base, slot, offset, extent, keep, dtype, shape, key, size, nbytes = map(
        _attribute, ("space", "base", "slot", "offset", "extent", "keep", "dtype", "shape", "key", "size", "nbytes"))

    def describe(self) -> str:
        return self._forced(View.describe, "describe()")

    def __getitem__(self, key):
        return slice_views(self._c, self._views, key)

    def __eq__(self, other):
        return self._compare(operator.eq, other)

    def __ne__(self, other):
        return self._compare(operator.ne, other)

    def _compare(self, op, other):
        theirs = other._views if type(other) is CoreView else (other,) * len(self._views)
        return lift(self._c, tuple(op(v, w) for v, w in zip(self._views, theirs)))

    def _forced(self, fn, what: str):
        values = tuple(fn(v) for v in self._views)
        if len(set(values)) != 1:
            self._c.diverge(f"{what} of a per-core view")
        return values[0]

    def __hash__(self):
        return self._forced(hash, "a hash")

    def __repr__(self):
        return self._forced(repr, "repr()")

    __str__ = __repr__

    def __format__(self, spec):
        return self._forced(lambda v: format(v, spec), "formatting")

    def __bool__(self):
        return True

    __len__ = _refused("len()")
    __iter__ = _refused("iteration")
    __contains__ = _refused("'in'")
    __call__ = _refused("a call")
    __getattr__ = _refused("an attribute")
    __setattr__ = _refused("attribute assignment")
    __delattr__ = _refused("attribute deletion")


def transpose(cores: Cores, per_core: list[list]) -> list:
    """Per-core lists of equal length as one list of per-core items (tuples item by item)."""
    if len({len(items) for items in per_core}) != 1:
        cores.diverge("cores get different numbers of items")
    return [_item(cores, column) for column in zip(*per_core)]


def _item(cores: Cores, values: tuple):
    first = values[0]
    if type(first) is tuple and all(type(v) is tuple and len(v) == len(first) for v in values):
        return tuple(_item(cores, column) for column in zip(*values))
    if type(first) is View and all(type(v) is View for v in values):
        return lift_views(cores, values)
    return lift(cores, values)


class AllCores(Kernel):
    """The kernel handle of a recording of all cores at once (see the module docstring).

    Its op log holds one entry per op: an Op every core issues, or a tuple of each core's Op."""

    def __init__(self, machine, cores: Cores, shared: _Shared):
        super().__init__(machine, 0, shared)
        self.core_id = CoreVal(cores, tuple(range(cores.n)))
        self._cores = cores

    def tiles(self, shape, tile, order: str = "row", group: int = 1) -> list:
        return self._per_core(lambda core, n: tile_share(shape, tile, order, group, core, n))

    def share(self, items) -> list:
        items = list(items)
        return self._per_core(lambda core, n: items[core::n])

    def _per_core(self, fn) -> list:
        cores = self._cores
        ids = self.core_id._v if type(self.core_id) is CoreVal else (self.core_id,) * cores.n
        counts = self.num_cores._v if type(self.num_cores) is CoreVal else (self.num_cores,) * cores.n
        try:
            lists = [fn(i, n) for i, n in zip(ids, counts)]
        except Exception as exc:
            cores.diverge(f"sharing work raised {type(exc).__name__}")
        return transpose(cores, lists)

    def copy(self, dst, src) -> None:
        self._record(_getframe(1).f_lineno, "copy", (dst,), (src,), ())

    def mma(self, acc, a, b, accumulate: bool = False, transpose_b: bool = False) -> None:
        self._record(_getframe(1).f_lineno, "mma", (acc,), (a, b), (bool(accumulate), bool(transpose_b)))

    def _record(self, line: int, kind: str, dst: tuple, src: tuple, params: tuple) -> None:
        for v in dst + src:
            if type(v) is CoreView:
                break
        else:   # the same op on every core
            super()._record(line, kind, dst, src, params)
            return
        n, nd, distinct = self._cores.n, len(dst), self._distinct
        ops = []
        try:
            for operands in zip(*[v._views if type(v) is CoreView else repeat(v, n) for v in dst + src]):
                key = (kind, line, params, *operands[:nd], None, *operands[nd:])
                op = distinct.get(key)
                ops.append(op if op is not None else self._new_op(key, kind, operands[:nd], operands[nd:], params))
        except Exception as exc:   # some core's op breaks a rule: it raises there, alone
            self._cores.diverge(f"{kind} raised {type(exc).__name__} on a core")
        if len(self._ops) >= self._max_ops:
            self._too_many(kind)
        self._ops.append(tuple(ops))


def builtins_overlay(cores: Cores) -> dict:
    """Builtins that would tell a per-core value from a core's own value, made exact."""
    def isinstance(obj, classes):   # noqa: A001 (the kernel's isinstance)
        if type(obj) is CoreView:
            return force_isinstance(obj._views[0], classes)
        return force_isinstance(obj, classes)

    def print(*args, **kwargs):     # noqa: A001 (core by core, every core prints)
        cores.diverge("print")
    def pow(*args):                 # noqa: A001 (three-argument pow never reaches CoreVal.__rpow__)
        if not any(type(x) is CoreVal for x in args):
            return builtins.pow(*args)
        columns = [x._v if type(x) is CoreVal else repeat(x, cores.n) for x in args]
        try:
            return lift(cores, tuple(builtins.pow(*column) for column in zip(*columns)))
        except Diverged:
            raise
        except Exception as exc:
            cores.diverge(f"pow raised {type(exc).__name__}")
    return {"isinstance": isinstance, "print": print, "pow": pow, "min": _extreme(cores, min),
            "max": _extreme(cores, max)}


def _extreme(cores: Cores, builtin):
    """min or max taken core by core where per-core values are among the items (the edge
    tiles of a grid: min(BM, M - i)); each core gets the item its own min would return."""
    def extreme(*args, **kwargs):
        items = list(args[0]) if len(args) == 1 else args
        if kwargs or not any(type(x) is CoreVal for x in items):
            return builtin(items, **kwargs) if len(args) == 1 else builtin(*args, **kwargs)
        columns = [x._v if type(x) is CoreVal else repeat(x, cores.n) for x in items]
        try:
            values = tuple(builtin(column) for column in zip(*columns))
        except Exception as exc:
            cores.diverge(f"{builtin.__name__} raised {type(exc).__name__}")
        return lift(cores, values)
    extreme.__name__ = builtin.__name__
    return extreme


def record_all_cores(instantiate, machine, args: list[View], shared: _Shared) -> tuple | None:
    """(buffers per core, table of distinct ops, op ids per core) from one run of a fresh
    instance of the kernel, or None where the cores diverge (or the run raises): then record
    core by core."""
    cores = Cores(machine.num_cores)
    try:
        kernel_fn = instantiate(builtins_overlay(cores))
        k = AllCores(machine, cores, shared)
        kernel_fn(k, *args)
    except Exception:
        return None
    if cores.divergences:
        return None
    table, ids = op_arrays(k._ops, cores.n)
    return (tuple(k._buffers),) * cores.n, table, ids


def op_arrays(log: list, n: int) -> tuple[tuple[Op, ...], tuple[np.ndarray, ...]]:
    """The op log of an all-cores run (an Op for every core, or a tuple of each core's Op) as a
    table of distinct ops and each core's op ids into it."""
    index: dict[int, int] = {}
    table: list[Op] = []

    def row(op: Op) -> int:
        i = index.get(id(op))
        if i is None:
            i = index[id(op)] = len(table)
            table.append(op)
        return i

    shared = np.empty(len(log), np.int64)
    own_rows, own_ids = [], []
    for r, entry in enumerate(log):
        if type(entry) is Op:
            shared[r] = row(entry)
        else:
            own_rows.append(r)
            own_ids.append([row(op) for op in entry])
    ids = np.repeat(shared[None, :], n, axis=0)   # [core, position]
    if own_rows:
        ids[:, own_rows] = np.array(own_ids, np.int64).T
    return tuple(table), tuple(ids)   # rows of a C-ordered array: each core's ids are contiguous


__all__ = ["AllCores", "CoreView", "Diverged", "record_all_cores", "refusal", "slice_views"]

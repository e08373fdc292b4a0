"""Per-core values: what a kernel computes from its core id when all cores are recorded at once.

The vectorized recorder (hwmodel.spmd) runs a kernel's Python once for every core. Its
core id is a `CoreVal`: one value per core. Arithmetic and comparisons on it are done
core by core and give CoreVals again (or a plain value when every core agrees). Anything
that needs one value for all cores (a branch, a loop bound, a list index, a dict key, a
string) gets it when every core agrees; when they disagree the cores would take different
paths, so the recording *diverges*: it is noted on the recording, a `Diverged` exception is
raised, and the recorder throws the run away and records core by core instead. A divergence
noted stays noted even if the kernel catches the exception, so a result is only ever kept
from a run in which every core provably did the same thing up to per-core values.

All slot names start with an underscore (kernels cannot reach them) and every protocol
Python could apply to a value is defined here, so a kernel cannot tell a CoreVal from its
own core's value without a divergence being noted.
"""
from __future__ import annotations

import math
import operator
from itertools import repeat

SCALARS = (int, float, bool, str)   # what a CoreVal holds (never None: `x is None` stays exact)


class Diverged(TypeError):
    """Cores disagree where the kernel needs one value: record core by core."""


class Cores:
    """One vectorized recording: its number of cores and the divergences noted so far."""

    __slots__ = ("n", "divergences", "reason")

    def __init__(self, n: int):
        self.n = n
        self.divergences = 0
        self.reason = ""

    def diverge(self, what: str):
        self.divergences += 1
        self.reason = self.reason or what
        raise Diverged(f"cores disagree: {what}")

    def undo(self) -> None:
        """Forget the last divergence: recorder code that caught its own Diverged and handled
        the per-core value itself (no kernel code ran in between)."""
        self.divergences -= 1
        if not self.divergences:
            self.reason = ""


def _same(values: tuple) -> bool:
    """Every core holds the same value, of the same type (1, 1.0 and True differ; so do 0.0 and -0.0)."""
    first = values[0]
    t = type(first)
    for x in values:
        if type(x) is not t:
            return False
    if values.count(first) != len(values):
        return False
    return t is not float or len({math.copysign(1.0, x) for x in values}) == 1


def lift(cores: Cores, values: tuple):
    """The per-core `values` as one value: plain when every core agrees, else a CoreVal. Other
    objects than scalars agree only by identity (equal lists that are different objects are
    different state: a core that appends to its own must not append to another's)."""
    first = values[0]
    if type(first) in SCALARS:
        if _same(values):
            return first
    elif all(x is first for x in values):
        return first
    for x in values:
        if type(x) not in SCALARS:
            cores.diverge(f"a per-core {type(x).__name__}")
    return CoreVal(cores, values)


def at(x, core: int):
    """Core `core`'s view of x: a CoreVal's value, recursively through tuples and slices."""
    t = type(x)
    if t is CoreVal:
        return x._v[core]
    if t is tuple:
        return tuple(at(e, core) for e in x)
    if t is slice:
        return slice(at(x.start, core), at(x.stop, core), at(x.step, core))
    return x


def per_core_in(x) -> Cores | None:
    """The recording of a CoreVal inside x (a value, tuple or slice), or None."""
    t = type(x)
    if t is CoreVal:
        return x._c
    if t is tuple:
        for e in x:
            c = per_core_in(e)
            if c is not None:
                return c
    elif t is slice:
        return per_core_in((x.start, x.stop, x.step))
    return None


def _apply(cores: Cores, op, mine: tuple, other, flip: bool):
    t = type(other)
    if t is CoreVal:
        theirs = other._v
    elif t in SCALARS:
        theirs = repeat(other)
    else:
        cores.diverge(f"{op.__name__} with a {t.__name__}")
    try:
        values = tuple(map(op, theirs, mine) if flip else map(op, mine, theirs))
    except Exception as exc:   # some core (or all) would raise here: let them, one by one
        cores.diverge(f"{op.__name__} raised {type(exc).__name__}")
    return lift(cores, values)


def _binary(op):
    def forward(self, other):
        return _apply(self._c, op, self._v, other, False)

    def reflected(self, other):
        return _apply(self._c, op, self._v, other, True)
    return forward, reflected


def _each(value: "CoreVal", fn, name: str, args: tuple) -> tuple:
    """fn applied to every core's value; a core that would raise diverges."""
    try:
        return tuple(fn(x, *args) for x in value._v)
    except Exception as exc:
        value._c.diverge(f"{name} raised {type(exc).__name__}")


def _unary(fn, name: str):
    def method(self, *args):
        return lift(self._c, _each(self, fn, name, args))
    return method


def _forced(fn, name: str):
    """A conversion to one plain value (bool, int, index, str...): every core's must agree."""
    def method(self, *args):
        values = _each(self, fn, name, args)
        if not _same(values):
            self._c.diverge(f"{name} of a per-core value")
        return values[0]
    return method


def _refused(name: str):
    def method(self, *args, **kwargs):
        self._c.diverge(f"{name} of a per-core value")
    return method


class CoreVal:
    """One scalar per core (not all equal). See the module docstring."""

    __slots__ = ("_v", "_c")

    def __init__(self, cores: Cores, values: tuple):
        object.__setattr__(self, "_c", cores)
        object.__setattr__(self, "_v", values)

    __add__, __radd__ = _binary(operator.add)
    __sub__, __rsub__ = _binary(operator.sub)
    __mul__, __rmul__ = _binary(operator.mul)
    __truediv__, __rtruediv__ = _binary(operator.truediv)
    __floordiv__, __rfloordiv__ = _binary(operator.floordiv)
    __mod__, __rmod__ = _binary(operator.mod)

    def __divmod__(self, other):        # (x // y, x % y) is divmod for ints and floats
        return self // other, self % other

    def __rdivmod__(self, other):
        return other // self, other % self

    __lshift__, __rlshift__ = _binary(operator.lshift)
    __rshift__, __rrshift__ = _binary(operator.rshift)
    __and__, __rand__ = _binary(operator.and_)
    __or__, __ror__ = _binary(operator.or_)
    __xor__, __rxor__ = _binary(operator.xor)
    __matmul__, __rmatmul__ = _binary(operator.matmul)
    __lt__, _ = _binary(operator.lt)
    __le__, _ = _binary(operator.le)
    __gt__, _ = _binary(operator.gt)
    __ge__, _ = _binary(operator.ge)
    __eq__, _ = _binary(operator.eq)
    __ne__, _ = _binary(operator.ne)
    del _

    def __pow__(self, other, mod=None):
        if mod is None:
            return _apply(self._c, operator.pow, self._v, other, False)
        if type(other) is CoreVal or type(mod) is CoreVal or type(other) not in SCALARS or type(mod) not in SCALARS:
            self._c.diverge("three-argument pow of per-core values")
        return _unary(pow, "pow")(self, other, mod)

    def __rpow__(self, other, mod=None):
        if mod is not None:
            self._c.diverge("three-argument pow of per-core values")
        return _apply(self._c, operator.pow, self._v, other, True)

    def __pos__(self):
        return self          # +x is x itself for ints and floats: identity stays exact

    __neg__ = _unary(operator.neg, "negation")
    __abs__ = _unary(abs, "abs")
    __invert__ = _unary(operator.invert, "~")
    __round__ = _unary(round, "round")
    __floor__ = _unary(math.floor, "floor")
    __ceil__ = _unary(math.ceil, "ceil")
    __trunc__ = _unary(math.trunc, "trunc")

    __bool__ = _forced(bool, "truth value")
    __int__ = _forced(int, "int()")
    __index__ = _forced(operator.index, "an index")
    __float__ = _forced(float, "float()")
    __complex__ = _forced(complex, "complex()")
    def __hash__(self):   # the view memo hashes per-core bounds on every per-core slice: kept short
        hashes = {hash(x) for x in self._v}
        if len(hashes) != 1:
            self._c.diverge("a hash (dict key or set member)")
        return hashes.pop()

    __str__ = _forced(str, "str()")
    __repr__ = _forced(repr, "repr()")
    __format__ = _forced(format, "formatting")

    __len__ = _refused("len()")
    __iter__ = _refused("iteration")
    __reversed__ = _refused("reversed()")
    __contains__ = _refused("'in'")
    __getitem__ = _refused("indexing")
    __setitem__ = _refused("item assignment")
    __delitem__ = _refused("item deletion")
    __call__ = _refused("a call")
    __enter__ = _refused("'with'")
    __exit__ = _refused("'with'")
    __getattr__ = _refused("an attribute")
    __setattr__ = _refused("attribute assignment")
    __delattr__ = _refused("attribute deletion")


def force_isinstance(obj, classes) -> bool:
    """isinstance as kernels see it while all cores are recorded at once: a CoreVal is
    whatever every core's value is (cores that disagree diverge)."""
    if type(obj) is CoreVal:
        answers = tuple(isinstance(x, classes) for x in obj._v)
        if not _same(answers):
            obj._c.diverge("isinstance of a per-core value")
        return answers[0]
    return isinstance(obj, classes)

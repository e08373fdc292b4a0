"""Handles a kernel manipulates: views of GM tensors and of on-chip buffers.

A `View` names a rectangle of one tensor (GM) or one ring slot of one buffer (on-chip):
base id, slot, per-dimension offset and extent. Slicing a view gives a view; no data
ever lives here, which is what lets a kernel run on shape-only tensors.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod

from hwmodel.corevals import per_core_in
from hwmodel.dtypes import nbytes
from hwmodel.errors import BoundsError


@dataclass(frozen=True, slots=True)
class BufferDecl:
    """One static allocation: a ring of `count` slots of `shape` in memory `space`."""

    id: int
    space: str
    shape: tuple[int, ...]
    dtype: str
    count: int
    name: str


@dataclass(frozen=True, slots=True)
class TensorDecl:
    """A GM tensor: a kernel argument or a workspace the kernel asked for."""

    id: int
    name: str
    shape: tuple[int, ...]
    dtype: str
    role: str  # "input", "output" or "workspace"


_KEEP2 = (True, True)
_new_view = object.__new__
_set = object.__setattr__   # views are read-only to kernels; the DSL builds them through this


class View:
    """A rectangle of a GM tensor or of one slot of an on-chip buffer."""

    __slots__ = ("space", "base", "slot", "offset", "extent", "keep", "dtype", "shape", "key", "_kids")

    def __init__(self, space: str, base: int, slot: int, offset: tuple[int, ...], extent: tuple[int, ...],
                 keep: tuple[bool, ...], dtype: str):
        _set(self, "space", space)
        _set(self, "base", base)
        _set(self, "slot", slot)
        _set(self, "offset", offset)
        _set(self, "extent", extent)
        _set(self, "keep", keep)
        _set(self, "dtype", dtype)
        _set(self, "shape", extent if all(keep) else tuple(e for e, k in zip(extent, keep) if k))
        # identity of the storage (hazard-tracking granularity): a GM tensor, or one ring slot
        _set(self, "key", -1 - base if space == "GM" else base * 2**20 + slot)   # slots < 2**20 (capacity / 32 B)
        _set(self, "_kids", {})   # memo of 2-D slices: the same slice is the same View object

    def __setattr__(self, name, value):
        raise BoundsError(f"view.{name} cannot be assigned: views are read-only (slice them for another view)")

    __delattr__ = __setattr__

    @classmethod
    def whole(cls, space: str, base: int, slot: int, shape: tuple[int, ...], dtype: str) -> "View":
        keep = _KEEP2 if len(shape) == 2 else (True,) * len(shape)
        return cls(space, base, slot, (0,) * len(shape), tuple(shape), keep, dtype)

    @property
    def size(self) -> int:
        return prod(self.extent)

    @property
    def nbytes(self) -> int:
        return nbytes(self.dtype, prod(self.extent))

    def describe(self) -> str:
        where = "GM tensor" if self.space == "GM" else f"{self.space} buffer"
        rng = ", ".join(f"{o}:{o + e}" for o, e in zip(self.offset, self.extent))
        return f"{where} #{self.base}[{rng}] {self.dtype}"

    def __repr__(self) -> str:
        return f"<{self.describe()} shape={self.shape}>"

    def __getitem__(self, key) -> "View":
        memo = None
        if type(key) is tuple and len(key) == 2:   # memoized 2-D slices (kernels slice a lot)
            k0, k1 = key
            if type(k0) is slice and type(k1) is slice:
                s0, t0, s1, t1 = k0.start, k0.stop, k1.start, k1.stop
                memo = (s0, t0, k0.step, s1, t1, k1.step)
                try:
                    v = self._kids.get(memo)
                except TypeError:   # per-core bounds (hwmodel.spmd) hash only if the cores agree
                    return self._per_core(key, undo=True)
                if v is not None:
                    return v
                keep = self.keep
                if keep is _KEEP2 and k0.step is None and k1.step is None:   # the common 2-D case, inlined
                    (o0, o1), (e0, e1) = self.offset, self.extent
                    if s0 is None:
                        s0 = 0
                    if s1 is None:
                        s1 = 0
                    if t0 is None or type(t0) is int and t0 > e0:
                        t0 = e0
                    if t1 is None or type(t1) is int and t1 > e1:
                        t1 = e1
                    if type(s0) is int and type(s1) is int and type(t0) is int and type(t1) is int \
                            and 0 <= s0 < t0 and 0 <= s1 < t1:
                        v = _new_view(View)                 # same storage: copy fields, skip __init__
                        _set(v, "space", self.space)
                        _set(v, "base", self.base)
                        _set(v, "slot", self.slot)
                        _set(v, "dtype", self.dtype)
                        _set(v, "key", self.key)
                        _set(v, "keep", keep)
                        _set(v, "offset", (o0 + s0, o1 + s1))
                        _set(v, "extent", (t0 - s0, t1 - s1))
                        _set(v, "shape", v.extent)
                        _set(v, "_kids", {})
                        self._kids[memo] = v
                        return v
        if per_core_in(key) is not None:
            return self._per_core(key)
        if type(key) is not tuple:
            key = (key,)
        keep = self.keep
        visible = [d for d, k in enumerate(keep) if k]
        if len(key) > len(visible):
            raise BoundsError(f"too many indices ({len(key)}) for a view of shape {self.shape}")
        offset, extent, keep = list(self.offset), list(self.extent), list(keep)
        for d, idx in zip(visible, key):
            size = extent[d]
            if type(idx) is slice:
                start, stop = _bounds(idx, size, self.shape)
                offset[d] += start
                extent[d] = stop - start
            elif hasattr(idx, "__index__"):
                i = int(idx)
                if i < 0 or i >= size:
                    raise BoundsError(f"index {i} is out of range for a dimension of size {size} "
                                      f"(view shape {self.shape})")
                offset[d] += i
                extent[d] = 1
                keep[d] = False
            else:
                raise BoundsError(f"index {idx!r} is neither an int nor a slice")
        return View(self.space, self.base, self.slot, tuple(offset), tuple(extent), tuple(keep), self.dtype)

    def _per_core(self, key, undo: bool = False):
        """This view sliced at per-core bounds (a recording of all cores at once): one view per core."""
        from hwmodel.spmd import slice_views
        cores = per_core_in(key)
        if cores is None:
            raise BoundsError(f"index {key!r} cannot be used to slice a view")
        if undo:
            cores.undo()   # the hash that found the per-core bounds is not the kernel's divergence
        return slice_views(cores, (self,) * cores.n, key)


def _bounds(idx: slice, size: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """(start, stop) of a slice within a dimension of `size`; stops past the end are clamped."""
    start, stop, step = idx.start, idx.stop, idx.step
    start = 0 if start is None else int(start)
    stop = size if stop is None else min(int(stop), size)
    if step is not None and step != 1:
        raise BoundsError(f"slices with a step are not supported (got step {step}); copy contiguous blocks")
    if start < 0 or start >= size or stop <= start:
        raise BoundsError(f"slice {start}:{idx.stop} is empty or out of range for a dimension "
                          f"of size {size} (view shape {shape})")
    return start, stop


class Ring:
    """A buffer allocated with count > 1: index it with the slot number to get a view."""

    __slots__ = ("decl", "_slots")

    def __init__(self, decl: BufferDecl):
        _set(self, "decl", decl)
        _set(self, "_slots", tuple(View.whole(decl.space, decl.id, s, decl.shape, decl.dtype) for s in range(decl.count)))

    def __setattr__(self, name, value):
        raise BoundsError(f"ring.{name} cannot be assigned: rings are read-only")

    __delattr__ = __setattr__

    def __len__(self) -> int:
        return self.decl.count

    def __getitem__(self, slot: int) -> View:
        try:
            return self._slots[slot]
        except (IndexError, TypeError):
            cores = per_core_in(slot)
            if cores is not None:   # per-core slot numbers (hwmodel.spmd): one view per core
                cores.undo()
                from hwmodel.spmd import slice_views
                return slice_views(cores, (self._slots,) * cores.n, slot)
            raise BoundsError(f"slot {slot!r} is out of range for a ring of {self.decl.count} "
                              f"({self.decl.space} buffer {self.decl.name!r}); use i % {self.decl.count}") from None

    def __repr__(self) -> str:
        d = self.decl
        return f"<ring of {d.count} x {d.space} {d.shape} {d.dtype}>"

"""The DSL's bookkeeping: views slice like numpy, tiles split the grid among cores exactly once,
slots are padded as the memories require, and user mistakes raise HwError."""
from __future__ import annotations

from math import ceil

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from helpers import machine, trace
from hwmodel.dsl import slot_bytes
from hwmodel.errors import HwError
from hwmodel.simulate import TensorArg
from hwmodel.views import View

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- views
def _index_strategy(size: int):
    ints = st.integers(0, size - 1)
    slices = st.tuples(st.integers(0, size - 1), st.integers(1, size + 3)).filter(
        lambda t: t[1] > t[0]).map(lambda t: slice(t[0], t[1]))
    return st.one_of(ints, slices, st.just(slice(None)))


@st.composite
def view_and_keys(draw):
    shape = tuple(draw(st.lists(st.integers(1, 9), min_size=1, max_size=3)))
    keys, cur = [], np.empty(shape)
    for _ in range(draw(st.integers(1, 3))):
        if cur.ndim == 0:
            break
        n = draw(st.integers(1, cur.ndim))
        key = tuple(draw(_index_strategy(cur.shape[d])) for d in range(n))
        keys.append(key)
        cur = cur[key]
    return shape, keys


@given(view_and_keys())
def test_view_slicing_matches_numpy(case):
    shape, keys = case
    base = np.arange(int(np.prod(shape))).reshape(shape)
    view = View.whole("GM", 0, 0, shape, "fp32")
    ref = base
    for key in keys:
        view = view[key]
        ref = ref[key]
    assert view.shape == ref.shape
    assert view.size == ref.size and view.nbytes == 4 * ref.size
    # the rectangle named by offset/extent holds exactly the numpy view's elements
    rect = base[tuple(slice(o, o + e) for o, e in zip(view.offset, view.extent))]
    np.testing.assert_array_equal(rect.reshape(view.shape), ref)


# ---------------------------------------------------------------- tiles
def tiles_per_core(machine_name: str, *args, **kwargs) -> list[list[tuple[int, int]]]:
    per_core: list = []

    def kernel(k, a, c):
        per_core.append(k.tiles(*args, **kwargs))

    trace(kernel, machine_name, TensorArg("a", (1, 1), "fp32"), TensorArg("c", (1, 1), "fp32", "output"))
    return per_core


@given(st.integers(1, 700), st.integers(1, 700), st.sampled_from([16, 64, 128, 256]),
       st.sampled_from([16, 64, 256]), st.sampled_from(["row", "col"]), st.integers(1, 5),
       st.sampled_from(["ascend-910a", "ascend-910b", "h100"]))
def test_tiles_cover_the_grid_exactly_once(rows, cols, tr, tc, order, group, machine_name):
    per_core = tiles_per_core(machine_name, (rows, cols), (tr, tc), order=order, group=group)
    assert len(per_core) == machine(machine_name).num_cores
    n_tiles = ceil(rows / tr) * ceil(cols / tc)
    assert max(map(len, per_core)) - min(map(len, per_core)) <= 1          # balanced round-robin
    seen = [t for mine in per_core for t in mine]
    assert len(seen) == n_tiles
    assert sorted(seen) == [(i, j) for i in range(0, rows, tr) for j in range(0, cols, tc)]


def test_tile_orders():
    # 32 tiles over 32 cores: core c's first tile is the c-th in the walk
    first = [mine[0] for mine in tiles_per_core("ascend-910a", (4 * 16, 8 * 16), (16, 16)) if mine]
    assert first[:10] == [(0, 0), (0, 16), (0, 32), (0, 48), (0, 64), (0, 80), (0, 96), (0, 112), (16, 0), (16, 16)]
    first = [mine[0] for mine in tiles_per_core("ascend-910a", (4 * 16, 8 * 16), (16, 16), order="col")]
    assert first[:6] == [(0, 0), (16, 0), (32, 0), (48, 0), (0, 16), (16, 16)]
    first = [mine[0] for mine in tiles_per_core("ascend-910a", (4 * 16, 8 * 16), (16, 16), group=2)]
    assert first[:6] == [(0, 0), (16, 0), (0, 16), (16, 16), (0, 32), (16, 32)]


# ---------------------------------------------------------------- slot sizes
@pytest.mark.parametrize("space,shape,dtype,expected", [
    ("UB", (10, 3), "fp32", 10 * 32),           # 12 B rows padded to 32 B
    ("UB", (10, 8), "fp32", 10 * 32),
    ("L0A", (17, 16), "fp16", 32 * 32),         # rows rounded up to whole 16-row fractals
    ("L0C", (16, 16), "fp32", 16 * 64),         # 64-B alignment
    ("L1", (4, 4, 64), "int8", 16 * 64),        # leading dims are rows
    ("UB", (7,), "int4", 32),                   # int4 packs two per byte
])
def test_slot_bytes(space, shape, dtype, expected):
    assert slot_bytes(machine("ascend-910a"), space, shape, dtype) == expected


# ---------------------------------------------------------------- user mistakes are HwErrors
@pytest.mark.parametrize("body", [
    pytest.param(lambda k: k.fractal("int4"), id="fractal-of-missing-mode"),     # the 910A has no int4 mode
    pytest.param(lambda k: k.capacity("L2"), id="capacity-of-unknown-memory"),
    pytest.param(lambda k: k.tiles((64, 64), (16, 16), order="diag"), id="tiles-bad-order"),
    pytest.param(lambda k: k.workspace((0, 16), "fp32"), id="zero-sized-workspace"),
    pytest.param(lambda k: k.alloc("UB", (0, 16), "fp32"), id="zero-sized-alloc"),
    pytest.param(lambda k: k.split_fp16(None, None, None, shift=25), id="split-shift-out-of-range"),
])
def test_kernel_mistakes_raise_hw_error(body):
    with pytest.raises(HwError):
        trace(lambda k, a, c: body(k), "ascend-910a", TensorArg("a", (16, 16), "fp16"),
              TensorArg("c", (16, 16), "fp32", "output"))


@pytest.mark.parametrize("count", [1, 2, 3])
def test_ring_is_indexed_by_slot_for_any_depth(count):
    """k.ring returns a slot-indexed ring even for one slot, so buffering depth can be a knob;
    its slots are the views alloc would give, and it is charged like alloc."""
    seen = {}

    def kernel(k, a, c):
        r = k.ring("UB", (16, 16), "fp32", "stage", count)
        seen["slots"] = [r[i % count] for i in range(2 * count)]
        seen["len"] = len(r)
        seen["free"] = k.capacity("UB")
        k.copy(r[0], a)
        k.copy(c, r[count - 1])

    trace(kernel, "ascend-910a", TensorArg("a", (16, 16), "fp32"), TensorArg("c", (16, 16), "fp32", "output"))
    assert seen["len"] == count
    assert seen["free"] == machine("ascend-910a").memories["UB"].capacity_bytes - count * 16 * 16 * 4
    assert {v.slot for v in seen["slots"]} == set(range(count)) and all(v.shape == (16, 16) for v in seen["slots"])
    with pytest.raises(HwError, match="UB"):       # the capacity check is alloc's
        trace(lambda k, a, c: k.ring("UB", (1024, 1024), "fp32", "big", count), "ascend-910a",
              TensorArg("a", (16, 16), "fp32"), TensorArg("c", (16, 16), "fp32", "output"))


def test_identical_ops_on_all_cores_are_one_object():
    """Slices are memoized and buffers have one handle for all cores, so the ops cores
    repeat are one shared object (the trace stays small); equal slices taken another way
    are equal views."""
    seen = []

    def kernel(k, a, c):
        buf = k.ring("UB", (16, 16), "fp32", "stage", 2)
        for step in range(3):
            k.copy(buf[step % 2], a[0:16, 0:16])
            k.copy(c[16 * k.core_id % 64:16 * k.core_id % 64 + 16, 0:16], buf[step % 2])
        seen.append((a[0:16, 0:16], a[0:16, 0:16], a[:, :][0:16, 0:16]))

    tr = trace(kernel, "ascend-910a", TensorArg("a", (64, 64), "fp32"), TensorArg("c", (64, 64), "fp32", "output"))
    first, again, other_way = seen[0]
    assert first is again and all(s[0] is first for s in seen)
    assert (other_way.offset, other_way.extent, other_way.key) == (first.offset, first.extent, first.key)
    assert tr.num_ops == 6 * machine("ascend-910a").num_cores
    assert len(tr.distinct_ops()) == 2 + 2 * 4     # loads into 2 slots; stores from 2 slots to 4 row bands

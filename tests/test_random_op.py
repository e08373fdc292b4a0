"""The vector unit's `random` op: deterministic counter-based values in [-1, 1), the same
however a tensor is tiled, charged on V, carried by the trace codec and trusted validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluator.codec import decode, encode
from helpers import machine
from hwmodel import numerics
from hwmodel.errors import DtypeError, HwError, ShapeError
from hwmodel.ops import static_cost
from hwmodel.simulate import TensorArg, declare, replay, simulate
from hwmodel.dsl import record_trace
from hwmodel.validate import validate_trace

pytestmark = pytest.mark.sim

ROWS, COLS = 48, 96


def random_kernel(seed: int, row_tiles: tuple[int, ...] = (ROWS,), col_tiles: tuple[int, ...] = (COLS,),
                  dtype: str = "fp32"):
    """Core 0 fills out[ROWS, COLS] tile by tile (tile sizes from the lists), each tile
    generated in a fresh UB buffer at its logical origin."""

    def kernel(k, out):
        if k.core_id:
            return
        ub = k.alloc("UB", (max(row_tiles), max(col_tiles)), dtype)
        r = 0
        for nr in row_tiles:
            c = 0
            for nc in col_tiles:
                k.random(ub[:nr, :nc], seed, origin=(r, c), tensor_shape=(ROWS, COLS))
                k.copy(out[r:r + nr, c:c + nc], ub[:nr, :nc])
                c += nc
            r += nr
    return kernel


def run(kernel, dtype: str = "fp32") -> np.ndarray:
    return simulate(kernel, machine("ascend-910a"), [TensorArg("out", (ROWS, COLS), dtype, "output")], {}).outputs["out"]


@pytest.mark.parametrize("dtype", ["fp32", "fp16", "bf16"])
def test_values_lie_in_the_half_open_unit_interval_and_look_uniform(dtype):
    x = run(random_kernel(7, dtype=dtype), dtype).astype(np.float64)
    assert np.isfinite(x).all() and x.min() >= -1.0 and x.max() < 1.0
    assert abs(x.mean()) < 0.05 and abs(x.var() - 1 / 3) < 0.03           # U[-1,1): mean 0, variance 1/3
    counts, _ = np.histogram(x, bins=8, range=(-1, 1))
    assert counts.min() > 0.8 * x.size / 8


def test_same_seed_same_values_other_seed_other_values():
    a, b, c = (run(random_kernel(seed)) for seed in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.01
    assert abs(np.corrcoef(a.ravel(), c.ravel())[0, 1]) < 0.1


def test_matches_the_independent_formula():
    """Element (i, j) is the SplitMix64 finalizer of seed * golden + flat index, top 24 bits."""
    seed = 12345
    got = run(random_kernel(seed))
    mask = 2**64 - 1
    expected = np.empty((ROWS, COLS))
    for idx in range(ROWS * COLS):
        x = (idx + seed * 0x9E3779B97F4A7C15) & mask
        x ^= x >> 30
        x = (x * 0xBF58476D1CE4E5B9) & mask
        x ^= x >> 27
        x = (x * 0x94D049BB133111EB) & mask
        x ^= x >> 31
        expected.flat[idx] = (x >> 40) / 2**23 - 1
    np.testing.assert_array_equal(got, expected.astype(np.float32))


@given(rows=st.lists(st.integers(1, 16), min_size=1, max_size=6), cols=st.lists(st.sampled_from([8, 16, 24, 32]),
                                                                                 min_size=1, max_size=5))
def test_values_do_not_depend_on_the_tiling(rows, cols):
    """Any split of the tensor into row bands and 8-column-aligned strips gives the same numbers."""
    rows = _cover(rows, ROWS)
    cols = _cover(cols, COLS)
    whole = numerics.random_uniform(99, np.arange(ROWS * COLS), "fp32").reshape(ROWS, COLS)
    np.testing.assert_array_equal(run(random_kernel(99, tuple(rows), tuple(cols))), whole)


def _cover(sizes: list[int], total: int) -> list[int]:
    """Repeat `sizes` until they cover `total`, trimming the last."""
    out = []
    while sum(out) < total:
        out.append(min(sizes[len(out) % len(sizes)], total - sum(out)))
    return out


def test_default_origin_is_the_view_offset_in_its_buffer():
    def kernel(k, out):
        if k.core_id:
            return
        ub = k.alloc("UB", (ROWS, COLS), "fp32")
        k.random(ub[:16, :], 5)                    # top band, then the rest: same as one call over ub
        k.random(ub[16:, :], 5)
        k.copy(out, ub)

    np.testing.assert_array_equal(run(kernel), run(random_kernel(5)))


def test_rules_are_checked_while_recording():
    def bad(call):
        def kernel(k, out):
            call(k, k.alloc("UB", (16, 32), "fp32"), k.alloc("UB", (16, 32), "int8"))
        return kernel

    arg = TensorArg("out", (16, 32), "fp32", "output")
    with pytest.raises(DtypeError, match="float"):
        record_trace(bad(lambda k, f, i: k.random(i, 1)), machine("ascend-910a"), declare([arg]))
    with pytest.raises(ShapeError, match="inside"):
        record_trace(bad(lambda k, f, i: k.random(f, 1, origin=(8, 0), tensor_shape=(16, 32))),
                     machine("ascend-910a"), declare([arg]))
    with pytest.raises(HwError, match="seed"):
        record_trace(bad(lambda k, f, i: k.random(f, -1)), machine("ascend-910a"), declare([arg]))


def test_codec_round_trip_validates_and_replays_identically():
    m = machine("ascend-910a")
    args = declare([TensorArg("out", (ROWS, COLS), "fp32", "output")])
    trace = record_trace(random_kernel(11, (16, 32), (32, 64)), m, args)
    again = decode(encode(trace))
    validate_trace(again, m)
    np.testing.assert_array_equal(replay(again, m, {})[0]["out"], replay(trace, m, {})[0]["out"])


def test_charged_on_the_vector_pipe_as_a_multi_pass_op():
    m = machine("ascend-910a")
    args = declare([TensorArg("out", (ROWS, COLS), "fp32", "output")])
    ops = {op.kind: op for op in record_trace(random_kernel(1), m, args).distinct_ops()}
    pipe, cycles, _ = static_cost(ops["random"], m)
    assert pipe == "V"
    repeats = -(-ROWS * COLS * 4 // m.vector.bytes_per_cycle)
    assert cycles >= m.vector.op_passes["random"] * repeats > repeats

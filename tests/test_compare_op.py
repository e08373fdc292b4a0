"""The vector unit's `compare` op: a float 0/1 mask of `a mode b` (operands broadcast),
exact against numpy for floats and integers, checked while recording, charged on V as a
one-pass op, carried by the trace codec and trusted validation."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from evaluator.codec import decode, encode
from helpers import machine
from hwmodel.dsl import record_trace
from hwmodel.errors import DtypeError, HwError, ShapeError
from hwmodel.ops import COMPARE_MODES, static_cost
from hwmodel.simulate import TensorArg, declare, replay
from hwmodel.validate import validate_trace
from test_vector_ops import run_ub

pytestmark = pytest.mark.sim

NUMPY_MODES = {"gt": np.greater, "ge": np.greater_equal, "lt": np.less, "le": np.less_equal,
               "eq": np.equal, "ne": np.not_equal}


@pytest.mark.parametrize("mode", COMPARE_MODES)
@pytest.mark.parametrize("b_shape", [(16, 64), (16, 1), (1, 64), (1, 1)])
def test_matches_numpy_with_broadcasting(rng, mode, b_shape):
    a = rng.integers(-3, 4, (16, 64)).astype(np.float32)           # small integers: many ties for eq/ge/le
    b = rng.integers(-3, 4, b_shape).astype(np.float32)
    out = run_ub(lambda k, u, o: k.compare(o, u[0], u[1], mode), {"a": a, "b": b}, (16, 64), "fp32")
    np.testing.assert_array_equal(out, NUMPY_MODES[mode](a, b).astype(np.float32))


def test_integer_operands_into_an_fp16_mask(rng):
    a = rng.integers(-128, 128, (16, 64)).astype(np.int8)
    b = np.zeros((1, 64), np.int8)
    out = run_ub(lambda k, u, o: k.compare(o, u[0], u[1], "ge"), {"a": a, "b": b}, (16, 64), "fp16")
    np.testing.assert_array_equal(out, (a >= 0).astype(np.float16))


@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=64, max_size=64),
       st.floats(-1e6, 1e6, width=32), st.sampled_from(COMPARE_MODES))
def test_mask_selects_exactly_what_numpy_selects(values, threshold, mode):
    """Masking x by compare(x, t) keeps exactly the elements numpy keeps (no rounding of x or t)."""
    x = np.asarray(values, np.float32).reshape(1, 64)
    t = np.full((1, 1), threshold, np.float32)

    def body(k, u, o):
        k.compare(o, u[0], u[1], mode)
        k.mul(o, o, u[0])

    out = run_ub(body, {"x": x, "t": t}, (1, 64), "fp32")
    np.testing.assert_array_equal(out, np.where(NUMPY_MODES[mode](x, t), x, np.float32(0)))


def recorded(call, dst_dtype="fp32", src_dtypes=("fp32", "fp32"), b_shape=(16, 32)):
    def kernel(k, out):
        dst = k.alloc("UB", (16, 32), dst_dtype)
        a, b = k.alloc("UB", (16, 32), src_dtypes[0]), k.alloc("UB", b_shape, src_dtypes[1])
        call(k, dst, a, b)
    return record_trace(kernel, machine("ascend-910a"), declare([TensorArg("out", (16, 32), "fp32", "output")]))


def test_rules_are_checked_while_recording():
    with pytest.raises(HwError, match="mode must be one of"):
        recorded(lambda k, d, a, b: k.compare(d, a, b, ">"))
    with pytest.raises(DtypeError, match="float 0/1 mask"):
        recorded(lambda k, d, a, b: k.compare(d, a, b, "gt"), dst_dtype="int8")
    with pytest.raises(DtypeError, match="fp32 vs fp16"):
        recorded(lambda k, d, a, b: k.compare(d, a, b, "gt"), src_dtypes=("fp32", "fp16"))
    with pytest.raises(ShapeError, match="broadcast"):
        recorded(lambda k, d, a, b: k.compare(d, a, b, "gt"), b_shape=(8, 32))


def compare_kernel(k, x, out):
    if k.core_id:
        return
    ub, mask = k.alloc("UB", (16, 32), "fp32"), k.alloc("UB", (16, 32), "fp32")
    k.copy(ub, x)
    k.compare(mask, ub, ub[:1, :], "lt")
    k.copy(out, mask)


def test_codec_round_trip_validates_and_replays_identically(rng):
    m = machine("ascend-910a")
    args = declare([TensorArg("x", (16, 32), "fp32"), TensorArg("out", (16, 32), "fp32", "output")])
    trace = record_trace(compare_kernel, m, args)
    again = decode(encode(trace))
    validate_trace(again, m)
    inputs = {"x": rng.uniform(-1, 1, (16, 32)).astype(np.float32)}
    expected = (inputs["x"] < inputs["x"][:1]).astype(np.float32)
    np.testing.assert_array_equal(replay(again, m, inputs)[0]["out"], expected)
    np.testing.assert_array_equal(replay(trace, m, inputs)[0]["out"], expected)


def test_charged_on_the_vector_pipe_as_one_pass():
    m = machine("ascend-910a")
    args = declare([TensorArg("x", (16, 32), "fp32"), TensorArg("out", (16, 32), "fp32", "output")])
    op = next(op for op in record_trace(compare_kernel, m, args).distinct_ops() if op.kind == "compare")
    pipe, cycles, _ = static_cost(op, m)
    repeats = -(-16 * 32 * 4 // m.vector.bytes_per_cycle)
    assert pipe == "V" and cycles == repeats + m.vector.startup_cycles

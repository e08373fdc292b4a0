"""Vector-unit ops through the DSL: each result is the FP64 value rounded once to the
destination dtype (nearest even), reductions by row or column, integers saturate."""
from __future__ import annotations

import numpy as np
import pytest

from helpers import machine
from hwmodel.simulate import TensorArg, simulate

pytestmark = pytest.mark.sim


def run_ub(body, inputs: dict[str, np.ndarray], out_shape, out_dtype, machine_name="ascend-910a"):
    """Core 0 copies every input GM->UB, runs body(k, ubs, out_ub), and copies out_ub to GM."""
    names = list(inputs)
    dtypes = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16", np.dtype(np.int8): "int8",
              np.dtype(np.int32): "int32"}

    def kernel(k, *views):
        if k.core_id:
            return
        ubs = []
        for view in views[:-1]:
            ub = k.alloc("UB", view.shape, view.dtype)
            k.copy(ub, view)
            ubs.append(ub)
        out = k.alloc("UB", out_shape, out_dtype)
        body(k, ubs, out)
        k.copy(views[-1], out)

    args = [TensorArg(n, inputs[n].shape, dtypes.get(inputs[n].dtype, "bf16")) for n in names]
    args.append(TensorArg("out", out_shape, out_dtype, "output"))
    return simulate(kernel, machine(machine_name), args, inputs).outputs["out"]


@pytest.mark.parametrize("shape,dst_shape,axis", [
    ((16, 64), (16, 1), 1), ((16, 64), (1, 64), 0),
    ((32, 1), (32, 1), 1),                                  # per row of a single column: identity
    ((32, 1), (1, 1), 0), ((1, 64), (1, 1), 1), ((1, 64), (1, 64), 0),
])
@pytest.mark.parametrize("kind", ["reduce_sum", "reduce_max"])
def test_reductions_by_row_and_column(rng, shape, dst_shape, axis, kind):
    x = rng.uniform(-1, 1, shape).astype(np.float32)
    out = run_ub(lambda k, u, o: getattr(k, kind)(o, u[0]), {"x": x}, dst_shape, "fp32")
    fn = np.sum if kind == "reduce_sum" else np.max
    expected = fn(x.astype(np.float64), axis=axis, keepdims=True).astype(np.float32)
    np.testing.assert_array_equal(out, expected)


def test_integer_reduce_sum_saturates():
    x = np.full((4, 32), 100, np.int8)
    out = run_ub(lambda k, u, o: k.reduce_sum(o, u[0]), {"x": x}, (4, 1), "int8")
    assert out.ravel().tolist() == [127] * 4


def test_rank_one_mla_rounds_once(rng):
    acc = rng.uniform(-1, 1, (16, 64)).astype(np.float32)
    a = rng.uniform(-1, 1, (16, 1)).astype(np.float32)
    b = rng.uniform(-1, 1, (1, 64)).astype(np.float32)

    def body(k, u, o):
        k.add(o, u[0], u[0])                               # o = 2 acc (exact)
        k.mla(o, u[1], u[2])

    out = run_ub(body, {"acc": acc, "a": a, "b": b}, (16, 64), "fp32")
    expected = (2 * acc.astype(np.float64) + a.astype(np.float64) * b.astype(np.float64)).astype(np.float32)
    np.testing.assert_array_equal(out, expected)


def test_fp16_arithmetic_rounds_to_fp16(rng):
    x = rng.uniform(-4, 4, (16, 64)).astype(np.float16)
    y = rng.uniform(-4, 4, (16, 64)).astype(np.float16)

    def body(k, u, o):
        k.div(o, u[0], u[1])
        k.muls(o, o, 0.1)

    out = run_ub(body, {"x": x, "y": y}, (16, 64), "fp16")
    q = (x.astype(np.float64) / y.astype(np.float64)).astype(np.float16)
    np.testing.assert_array_equal(out, (q.astype(np.float64) * 0.1).astype(np.float16))


def test_bf16_scalar_multiply_is_correctly_rounded():
    """1 x (1 + 2**-8 + 2**-30) lies just above a bf16 tie: nearest is 1 + 2**-7, not 1."""
    import ml_dtypes
    x = np.ones((16, 16), ml_dtypes.bfloat16)
    out = run_ub(lambda k, u, o: k.muls(o, u[0], 1 + 2.0 ** -8 + 2.0 ** -30), {"x": x}, (16, 16), "bf16",
                 machine_name="ascend-910b")
    assert set(out.astype(np.float64).ravel().tolist()) == {1 + 2.0 ** -7}


def test_cast_and_split_through_the_dsl(rng):
    x = rng.uniform(-1, 1, (16, 64)).astype(np.float32)
    out = run_ub(lambda k, u, o: k.cast(o, u[0]), {"x": x}, (16, 64), "fp16")
    np.testing.assert_array_equal(out, x.astype(np.float16))

    def split(k, u, o):
        hi = k.alloc("UB", (16, 64), "fp16")
        lo = k.alloc("UB", (16, 64), "fp16")
        k.split_fp16(hi, lo, u[0], shift=11)
        a32 = k.alloc("UB", (16, 64), "fp32")
        k.cast(o, hi)
        k.cast(a32, lo)
        k.axpy(o, a32, 2.0 ** -11)

    recon = run_ub(split, {"x": x}, (16, 64), "fp32")
    assert np.all(np.abs(recon.astype(np.float64) - x) <= 2.0 ** -22 * np.abs(x))


def test_quantize_dequantize_round_trip(rng):
    x = rng.uniform(-3, 3, (16, 64)).astype(np.float32)
    scale = (np.abs(x).max(axis=1, keepdims=True) / 127).astype(np.float32)
    ones = np.ones((1, 64), np.float32)

    def body(k, u, o):
        q = k.alloc("UB", (16, 64), "int8")
        k.quantize(q, u[0], u[1])
        k.dequantize(o, q, u[1], u[2])

    out = run_ub(body, {"x": x, "scale": scale, "ones": ones}, (16, 64), "fp32")
    q = np.clip(np.rint(x / scale), -128, 127)
    np.testing.assert_array_equal(out, (q * scale.astype(np.float64)).astype(np.float32))
    assert np.all(np.abs(out - x) <= scale / 2 * (1 + 1e-6))


def test_unwritten_buffer_reads_as_nan():
    x = np.zeros((16, 64), np.float32)

    def body(k, u, o):
        junk = k.alloc("UB", (16, 64), "fp32")
        k.add(o, u[0], junk)

    assert np.isnan(run_ub(body, {"x": x}, (16, 64), "fp32")).all()

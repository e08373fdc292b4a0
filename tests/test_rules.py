"""Every hardware rule, broken on purpose by a small inline kernel: the right HwError
subclass, raised while recording, with the numbers and the fix in its message."""
from __future__ import annotations

import re

import numpy as np
import pytest

from helpers import machine, trace
from hwmodel.errors import (AlignmentError, BoundsError, CapacityError, DtypeError, HwError, PathError,
                            ShapeError)
from hwmodel.simulate import TensorArg, simulate

pytestmark = pytest.mark.unit

A32 = TensorArg("a", (64, 64), "fp32")
A16 = TensorArg("a", (64, 64), "fp16")
C32 = TensorArg("c", (64, 64), "fp32", "output")


def raises(exc_type, kernel, *args, machine_name="ascend-910a"):
    """Record `kernel` and return the message of the exception it must raise."""
    with pytest.raises(exc_type) as info:
        trace(kernel, machine_name, *(args or (A32, C32)))
    assert isinstance(info.value, HwError)
    return str(info.value)


# ---------------------------------------------------------------- capacity
def test_alloc_larger_than_l0a_names_capacity_and_request():
    def kernel(k, a, c):
        k.alloc("L0A", (256, 256), "fp16", name="a_tile")

    msg = raises(CapacityError, kernel)
    assert "65,536 B capacity" in msg and "131,072 B" in msg and "a_tile" in msg
    assert "smaller tiles" in msg


def test_capacity_counts_earlier_allocations_and_ring_slots():
    def kernel(k, a, c):
        k.alloc("L0A", (64, 128), "fp16")                  # 16 KiB
        k.alloc("L0A", (64, 128), "fp16", count=3, name="ring")   # 48 KiB: fills it exactly
        assert k.capacity("L0A") == 0
        k.alloc("L0A", (16, 16), "fp16", name="one_more")

    msg = raises(CapacityError, kernel)
    assert "66,048 B requested" in msg and "65,536 B already allocated" in msg and "512 B" in msg


def test_capacity_pads_rows_to_alignment_and_fractals():
    def kernel(k, a, c):
        k.alloc("L0A", (17, 1), "fp16")                    # 17 rows -> 32 fractal rows x 32 B = 1 KiB
        assert k.capacity("L0A") == 65536 - 1024

    trace(kernel, "ascend-910a", A32, C32)


def test_unknown_memory_lists_the_real_ones():
    def kernel(k, a, c):
        k.alloc("L2", (16, 16), "fp32")

    msg = raises(HwError, kernel)
    assert "'L2'" in msg and "L0A" in msg and "UB" in msg


# ---------------------------------------------------------------- data paths
def test_gm_to_l0c_copy_is_an_illegal_path_listing_legal_ones():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (64, 64), "fp32")
        k.copy(acc, a)

    msg = raises(PathError, kernel)
    assert "GM->L0C" in msg
    for p in machine("ascend-910a").paths:
        assert f"{p.src}->{p.dst}" in msg


def test_l0c_to_ub_does_not_exist_on_910b():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (64, 64), "fp32")
        ub = k.alloc("UB", (64, 64), "fp32")
        assert not k.has_path("L0C", "UB") and k.has_path("L0C", "GM")
        k.copy(ub, acc)

    msg = raises(PathError, kernel, machine_name="ascend-910b")
    assert "no data path L0C->UB on ascend-910b" in msg and "L0C->GM" in msg


def test_mma_operands_must_sit_in_the_cube_buffers():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (16, 16), "fp32")
        a_l1 = k.alloc("L1", (16, 16), "fp16")
        b_l0 = k.alloc("L0B", (16, 16), "fp16")
        k.mma(acc, a_l1, b_l0)

    msg = raises(PathError, kernel)
    assert "left operand from L0A" in msg and "L1" in msg


def test_vector_ops_work_on_ub_only():
    def kernel(k, a, c):
        l1 = k.alloc("L1", (16, 16), "fp32")
        k.add(l1, l1, l1)

    assert "vector ops work on UB" in raises(PathError, kernel)


# ---------------------------------------------------------------- alignment
def test_ub_view_must_start_on_32_bytes():
    def kernel(k, a, c):
        ub = k.alloc("UB", (64, 64), "fp32")
        k.copy(ub[:, 4:12], a[:, 4:12])                    # 16 B into the row

    msg = raises(AlignmentError, kernel)
    assert "16 B into its row" in msg and "32-B alignment" in msg and "multiple of 8 fp32" in msg


def test_aligned_ub_column_slice_is_fine():
    def kernel(k, a, c):
        ub = k.alloc("UB", (64, 64), "fp32")
        k.copy(ub[:, 8:16], a[:, 8:16])

    trace(kernel, "ascend-910a", A32, C32)


def test_l0a_view_must_start_on_a_fractal_row():
    def kernel(k, a, c):
        l1 = k.alloc("L1", (64, 64), "fp16")
        l0a = k.alloc("L0A", (64, 64), "fp16")
        k.copy(l1, a)
        k.copy(l0a[8:24, :], l1[0:16, :])

    msg = raises(AlignmentError, kernel, A16, C32)
    assert "row 8" in msg and "16-row fractals" in msg


# ---------------------------------------------------------------- dtypes
def test_fp32_into_the_cube_is_a_dtype_error():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (16, 16), "fp32")
        a0 = k.alloc("L0A", (16, 16), "fp32")
        b0 = k.alloc("L0B", (16, 16), "fp32")
        k.mma(acc, a0, b0)

    msg = raises(DtypeError, kernel)
    assert "fp32 x fp32" in msg and "fp16" in msg and "int8" in msg


def test_int8_products_need_an_int32_accumulator():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (16, 16), "fp32")
        a0 = k.alloc("L0A", (16, 32), "int8")
        b0 = k.alloc("L0B", (32, 16), "int8")
        k.mma(acc, a0, b0)

    assert "int8 products accumulate in int32" in raises(DtypeError, kernel)


def test_copies_do_not_convert():
    def kernel(k, a, c):
        ub = k.alloc("UB", (64, 64), "fp16")
        k.copy(ub, a)

    msg = raises(DtypeError, kernel)
    assert "source is fp32, destination fp16" in msg and "k.cast" in msg


def test_float_only_vector_op_rejects_ints():
    def kernel(k, a, c):
        ub = k.alloc("UB", (16, 32), "int32")
        k.exp(ub, ub)

    assert "float operands" in raises(DtypeError, kernel)


def test_unknown_dtype():
    def kernel(k, a, c):
        k.alloc("UB", (16, 16), "fp8")

    assert "fp8" in raises(DtypeError, kernel)


# ---------------------------------------------------------------- shapes
def test_copy_shape_mismatch_names_both_shapes():
    def kernel(k, a, c):
        ub = k.alloc("UB", (64, 32), "fp32")
        k.copy(ub, a)

    msg = raises(ShapeError, kernel)
    assert "(64, 64)" in msg and "(64, 32)" in msg and "buf[:m, :n]" in msg


def test_mma_with_mismatched_k():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (16, 16), "fp32")
        a0 = k.alloc("L0A", (16, 32), "fp16")
        b0 = k.alloc("L0B", (16, 16), "fp16")
        k.mma(acc, a0, b0)

    msg = raises(ShapeError, kernel)
    assert "(16, 32)" in msg and "(16, 16)" in msg and "need a (M,K)" in msg


def test_mma_transpose_b_takes_n_by_k():
    def kernel(k, a, c):
        acc = k.alloc("L0C", (16, 48), "fp32")
        a0 = k.alloc("L0A", (16, 32), "fp16")
        b0 = k.alloc("L0B", (48, 32), "fp16")
        k.mma(acc, a0, b0, transpose_b=True)               # legal
        k.mma(acc, a0, b0)                                 # (48, 32) is not (K, N) = (32, 48)

    assert "b (48, 32)" in raises(ShapeError, kernel)


def test_vector_broadcast_rule():
    def kernel(k, a, c):
        x = k.alloc("UB", (16, 64), "fp32")
        col = k.alloc("UB", (16, 1), "fp32")
        bad = k.alloc("UB", (8, 64), "fp32")
        k.add(x, x, col)                                   # broadcasts
        k.add(x, x, bad)

    assert "(8, 64) does not broadcast" in raises(ShapeError, kernel)


def test_reduction_destination_shape():
    def kernel(k, a, c):
        x = k.alloc("UB", (16, 64), "fp32")
        d = k.alloc("UB", (16, 2), "fp32")
        k.reduce_sum(d, x)

    assert "(16, 1) (per row) or (1, 64) (per column)" in raises(ShapeError, kernel)


# ---------------------------------------------------------------- indexing
def test_ring_slot_out_of_range():
    def kernel(k, a, c):
        ring = k.alloc("UB", (16, 64), "fp32", count=2, name="stage")
        ring[2]

    msg = raises(BoundsError, kernel)
    assert "slot 2" in msg and "ring of 2" in msg and "i % 2" in msg


def test_passing_a_ring_instead_of_a_slot():
    def kernel(k, a, c):
        ring = k.alloc("UB", (64, 64), "fp32", count=2)
        k.copy(ring, a)

    assert "index a ring with its slot number" in raises(HwError, kernel)


def test_slice_with_a_step():
    def kernel(k, a, c):
        a[::2, :]

    assert "step 2" in raises(BoundsError, kernel)


@pytest.mark.parametrize("index,words", [
    ((64,), "index 64 is out of range for a dimension of size 64"),
    ((slice(70, 80), slice(None)), "slice 70:80 is empty or out of range for a dimension of size 64"),
    ((slice(0, 8), slice(64, 65)), "slice 64:65 is empty or out of range"),
    ((slice(-8, None),), "slice -8:None"),                  # no negative (Python-style) indices
    ((slice(8, 8),), "slice 8:8 is empty"),
    ((0, 0, 0), "too many indices (3)"),
    ((1.5,), "neither an int nor a slice"),
])
def test_out_of_range_index(index, words):
    def kernel(k, a, c):
        a[index]

    assert words in raises(BoundsError, kernel)


def test_slice_stop_past_the_end_is_clamped():
    def kernel(k, a, c):
        assert a[60:100, :].shape == (4, 64)
        assert a[3].shape == (64,)

    trace(kernel, "ascend-910a", A32, C32)


def test_int4_view_starting_mid_byte_is_misaligned():
    def kernel(k, a, c):
        l1 = k.alloc("L1", (16, 128), "int4")
        l0 = k.alloc("L0A", (16, 128), "int4")
        k.copy(l0[:, 0:64], l1[:, 1:65])

    raises(AlignmentError, kernel, TensorArg("a", (16, 128), "int4"), TensorArg("c", (16, 16), "int32", "output"),
           machine_name="ascend-910b")


# ---------------------------------------------------------------- GM inputs
def test_kernel_inputs_are_read_only():
    def kernel(k, a, c):
        ub = k.alloc("UB", (64, 64), "fp32")
        k.copy(ub, a)
        k.copy(a, ub)

    assert "read-only" in raises(HwError, kernel)


# ---------------------------------------------------------------- SPMD rules
def test_rule_broken_on_one_core_only_is_caught():
    def kernel(k, a, c):
        if k.core_id < 2:
            ub = k.alloc("UB", (64, 64), "fp32" if k.core_id == 0 else "fp16")
            k.copy(ub, a)                                  # legal on core 0, a dtype error on core 1

    raises(DtypeError, kernel)



def test_unequal_barrier_counts():
    def kernel(k, a, c):
        if k.core_id == 0:
            k.barrier()

    msg = raises(HwError, kernel)
    assert "[0, 1]" in msg and "deadlock" in msg


def test_workspace_shapes_must_agree_across_cores():
    def kernel(k, a, c):
        k.workspace((16, 16 + 16 * (k.core_id % 2)), "fp32")

    msg = raises(ShapeError, kernel)
    assert "workspace #0" in msg and "(16, 16)" in msg and "(16, 32)" in msg


def test_workspaces_are_shared_by_all_cores():
    def kernel(k, a, c):
        w = k.workspace((32, 64), "fp32")
        ub = k.alloc("UB", (1, 64), "fp32")
        if k.core_id < 32:
            k.copy(ub, a[k.core_id:k.core_id + 1, :])
            k.copy(w[k.core_id:k.core_id + 1, :], ub)
        k.barrier()
        if k.core_id == 0:
            big = k.alloc("UB", (32, 64), "fp32")
            k.copy(big, w)
            k.copy(c[:32, :], big)

    a = np.arange(64 * 64, dtype=np.float32).reshape(64, 64)
    result = simulate(kernel, machine("ascend-910a"), [A32, C32], {"a": a})
    assert len([t for t in result.trace.tensors if t.role == "workspace"]) == 1
    np.testing.assert_array_equal(result.outputs["c"][:32], a[:32])


def test_error_messages_name_the_op():
    def kernel(k, a, c):
        ub = k.alloc("UB", (64, 32), "fp32")
        k.copy(ub, a)

    assert re.match(r"copy: ", raises(ShapeError, kernel))


def test_check_op_once_accepts_exactly_what_check_op_accepts():
    """The memo of passed copy rules (hwmodel.ops.check_op_once) never lets through a copy that
    check_op rejects: library copies moved to every on-chip offset, GM offset and shape
    nearby, in one memo, against check_op on each."""
    from itertools import product

    from hwmodel.ops import Op, check_op, check_op_once
    from hwmodel.views import View
    m = machine("ascend-910a")
    passed: set = set()
    verdicts = {True: 0, False: 0}
    for space, (r, c), (gr, gc), (er, ec), dtype in product(
            ("L1", "UB", "L0A"), [(0, 0), (16, 0), (3, 0), (0, 8), (0, 16), (16, 5)], [(0, 0), (5, 7)],
            [(16, 16), (16, 8)], ("fp16", "fp32")):
        local = View(space, 0, 0, (r, c), (er, ec), (True, True), dtype)
        gm = View("GM", 1, 0, (gr, gc), (er, ec), (True, True), dtype)
        for op in (Op("copy", (local,), (gm,)), Op("copy", (gm,), (local,))):
            try:
                check_op(op, m)
                ok = True
            except HwError:
                ok = False
            try:
                check_op_once(op, m, passed)
                once = True
            except HwError:
                once = False
            assert once == ok, op
            verdicts[ok] += 1
    assert verdicts[True] and verdicts[False]

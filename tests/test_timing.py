"""The timing engine: hazards and double buffering, GM transfer cost from the preset's numbers,
in-order pipes, busy fractions, L2 hits, and the per-op issue cost."""
from __future__ import annotations

import time
from math import prod

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from evaluator.tasks import get_task
from helpers import gemm_args, library_kernel, machine
from hwmodel.dsl import Trace
from hwmodel.errors import BudgetError, HwError
from hwmodel.limits import MAX_L2_BLOCK_TOUCHES
from hwmodel.ops import Op
from hwmodel.simulate import TensorArg, simulate
from hwmodel import timing
from hwmodel.timing import _Bandwidth, _block_entries, _GmAccess, l2_work, simulate_timing
from hwmodel.views import View

pytestmark = pytest.mark.sim

M910 = "ascend-910a"


# ---------------------------------------------------------------- double buffering
def pipeline(slots: int, steps: int = 16):
    """Core 0 streams K-steps of A and B from GM into L0A/L0B and accumulates with the cube."""
    def kernel(k, a, b, c):
        if k.core_id:
            return
        a0 = k.alloc("L0A", (64, 128), "fp16", count=slots)
        b0 = k.alloc("L0B", (128, 64), "fp16", count=slots)
        a0, b0 = (a0, b0) if slots > 1 else ([a0], [b0])
        acc = k.alloc("L0C", (64, 64), "fp32")
        for s in range(steps):
            x = s % slots
            k.copy(a0[x], a[:, s * 128:(s + 1) * 128])
            k.copy(b0[x], b[s * 128:(s + 1) * 128, :])
            k.mma(acc, a0[x], b0[x], accumulate=s > 0)
    return kernel, gemm_args(64, 128 * steps, 64, "fp16")


def test_double_buffering_overlaps_copies_with_mma():
    single = simulate(*pipeline(1)[:1], machine(M910), pipeline(1)[1]).timing
    double = simulate(*pipeline(2)[:1], machine(M910), pipeline(2)[1]).timing
    assert double.op_counts == single.op_counts and double.bytes_by_path == single.bytes_by_path
    assert double.cycles < 0.85 * single.cycles, (double.cycles, single.cycles)
    assert double.pipe_busy["M"] > single.pipe_busy["M"]


def test_single_buffered_pipeline_serialises_copy_and_mma():
    """With one slot, the next load must wait for the mma reading the slot (write after read),
    and the mma for the loads (read after write): time is the sum of both, step by step."""
    kernel, args = pipeline(1, steps=4)
    t = simulate(kernel, machine(M910), args, timeline_core=0).timing
    ops = {i: (pipe, start, end) for i, pipe, start, end in t.timeline}
    for s in range(1, 4):
        load_a, load_b, mma_prev = 3 * s, 3 * s + 1, 3 * s - 1
        assert ops[load_a][1] >= ops[mma_prev][2] and ops[load_b][1] >= ops[mma_prev][2]
        assert ops[3 * s + 2][1] >= max(ops[load_a][2], ops[load_b][2])


def test_library_gemm_double_buffering_is_faster():
    args = gemm_args(1024, 1024, 1024, "fp16")
    t1 = simulate(library_kernel("hgemm_cube", SLOTS=1), machine(M910), args).timing
    t2 = simulate(library_kernel("hgemm_cube", SLOTS=2), machine(M910), args).timing
    assert t2.time_ns < 0.9 * t1.time_ns


# ---------------------------------------------------------------- one GM transfer
def test_big_gm_to_l1_copy_costs_bytes_over_rate_plus_latency():
    rows, cols = 256, 1024                                  # 512 KiB of fp16

    def kernel(k, a, c):
        if k.core_id == 0:
            buf = k.alloc("L1", (rows, cols), "fp16")
            k.copy(buf, a)

    spec = machine(M910)
    t = simulate(kernel, spec, [TensorArg("a", (rows, cols), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]).timing
    path = spec.path("GM", "L1")
    nbytes = rows * cols * 2
    # one active core: its link to HBM (32 B/cycle) is slower than the DMA (256) or its HBM share
    rate = min(path.bytes_per_cycle, spec.gm.core_hbm_bytes_per_cycle, spec.gm.hbm_gbps / spec.clock_ghz)
    expected = spec.issue_cycles + path.setup_cycles + nbytes / rate + spec.gm.hbm_latency_cycles
    assert rate == 32
    assert t.cycles == pytest.approx(expected, rel=1e-9)
    assert t.time_ns == pytest.approx(expected / spec.clock_ghz, rel=1e-9)
    assert t.hbm_bytes == nbytes and t.l2_hit_bytes == 0
    assert t.bytes_by_path == {"GM->L1": nbytes} and t.active_cores == 1
    assert t.pipe_busy["MTE2"] == pytest.approx((path.setup_cycles + nbytes / rate) / expected)


def test_partial_sectors_are_charged_whole():
    def kernel(k, a, c):
        if k.core_id == 0:
            ub = k.alloc("UB", (64, 8), "fp32")
            k.copy(ub, a[:, 4:12])                          # 32 B per row, straddling two sectors

    spec = machine(M910)
    t = simulate(kernel, spec, [TensorArg("a", (64, 64), "fp32"), TensorArg("c", (1, 1), "fp32", "output")]).timing
    charged = 64 * 2 * spec.gm.sector_bytes
    expected = spec.issue_cycles + spec.path("GM", "UB").setup_cycles + charged / 32 + spec.gm.hbm_latency_cycles
    assert t.cycles == pytest.approx(expected)
    assert t.bytes_by_path == {"GM->UB": 64 * 32}


# ---------------------------------------------------------------- pipes and hazards
@pytest.fixture(scope="module")
def sgemm_timeline():
    spec = machine(M910)
    result = simulate(library_kernel("sgemm_cube"), spec, gemm_args(256, 512, 512, "fp32"), timeline_core=1)
    return spec, result


def _latency(op, spec) -> float:
    if op.kind != "copy":
        return 0.0
    src, dst = op.src[0].space, op.dst[0].space
    if src == "GM":
        return spec.gm.l2_latency_cycles                   # at least the L2 hit latency
    if dst == "GM":
        return 0.0
    return spec.path(src, dst).latency_cycles


def test_pipes_run_in_program_order(sgemm_timeline):
    spec, result = sgemm_timeline
    by_pipe: dict[str, list] = {}
    for i, pipe, start, end in result.timing.timeline:
        assert end >= start
        by_pipe.setdefault(pipe, []).append((i, start, end))
    assert {"MTE2", "MTE1", "M", "V", "MTE3"} <= set(by_pipe)
    for pipe, ops in by_pipe.items():
        ops.sort()
        for (_, _, end_prev), (_, start, _) in zip(ops, ops[1:]):
            assert start >= end_prev, pipe


def test_hazards_on_the_timeline(sgemm_timeline):
    """An op starts after the data it reads is ready and after earlier readers of what it writes."""
    spec, result = sgemm_timeline
    ops = result.trace.ops[1]
    intervals = {i: (start, end) for i, _, start, end in result.timing.timeline}
    last_write: dict[int, float] = {}
    last_read: dict[int, float] = {}
    checked = 0
    for i, op in enumerate(ops):
        if op.kind == "barrier":
            continue
        start, end = intervals[i]
        for v in op.src:
            if v.key in last_write and v.key not in {d.key for d in op.dst}:
                assert start >= last_write[v.key] - 1e-9, (i, op)
                checked += 1
        for v in op.dst:
            assert start >= last_read.get(v.key, 0.0) - 1e-9, (i, op)
        for v in op.src:
            last_read[v.key] = max(last_read.get(v.key, 0.0), end)
        for v in op.dst:
            last_write[v.key] = end + _latency(op, spec)
    assert checked > 100


@pytest.mark.parametrize("name,knobs,machine_name,dtype", [
    ("sgemm_cube", {}, "ascend-910a", "fp32"),
    ("sgemm_cube", {"SLOTS": 1}, "ascend-910a", "fp32"),
    ("hgemm_cube", {"BM": 128}, "ascend-910b", "fp16"),
    ("sgemm_vector", {}, "ascend-910a", "fp32"),
])
def test_busy_fractions_are_fractions(name, knobs, machine_name, dtype):
    spec = machine(machine_name)
    t = simulate(library_kernel(name, **knobs), spec, gemm_args(256, 128, 512, dtype)).timing
    assert set(t.pipe_busy) == set(spec.pipes)
    assert all(0.0 <= f <= 1.0 for f in t.pipe_busy.values()), t.pipe_busy
    assert max(t.pipe_busy.values()) > 0.01
    assert t.time_ns == pytest.approx(max(t.core_time_ns))
    assert 0.0 <= t.l2_hit_rate <= 1.0


def test_timing_only_equals_numeric_mode(rng):
    spec = machine(M910)
    args = gemm_args(256, 256, 512, "fp32")
    kernel = library_kernel("sgemm_cube")
    data = {"a": rng.uniform(-1, 1, (256, 256)).astype(np.float32),
            "b": rng.uniform(-1, 1, (256, 512)).astype(np.float32)}
    shape_only = simulate(kernel, spec, args)
    numeric = simulate(kernel, spec, args, data)
    assert shape_only.outputs is None and numeric.outputs is not None
    assert shape_only.timing == numeric.timing
    np.testing.assert_array_equal(shape_only.written["c"], numeric.written["c"])


def test_simulate_timing_on_a_recorded_trace_is_deterministic():
    spec = machine(M910)
    trace = simulate(library_kernel("hgemm_cube"), spec, gemm_args(512, 256, 512, "fp16")).trace
    assert simulate_timing(trace, spec) == simulate_timing(trace, spec)


# ---------------------------------------------------------------- L2
def panel_readers(shared: bool):
    def kernel(k, a, c):
        if k.core_id < 2:
            l1 = k.alloc("L1", (64, 512), "fp16")
            rows = 0 if shared else 64 * k.core_id
            k.copy(l1, a[rows:rows + 64, :])
    return kernel, [TensorArg("a", (128, 512), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]


def test_two_cores_reading_one_panel_hit_in_l2():
    spec = machine(M910)
    t = simulate(*panel_readers(shared=True)[:1], spec, panel_readers(True)[1]).timing
    panel = 64 * 512 * 2
    assert t.l2_hit_bytes == panel and t.hbm_bytes == panel
    assert t.l2_hit_rate == pytest.approx(0.5)
    # the core that hits reads at the L2 link rate and waits the L2 latency
    miss_core, hit_core = t.core_time_ns[:2]                # core 0 runs first and fills L2
    assert hit_core < miss_core and t.active_cores == 2
    expected_hit = (spec.issue_cycles + spec.path("GM", "L1").setup_cycles + panel / spec.gm.core_l2_bytes_per_cycle
                    + spec.gm.l2_latency_cycles)
    assert hit_core == pytest.approx(spec.ns(expected_hit))


def test_two_cores_reading_disjoint_panels_miss():
    t = simulate(*panel_readers(shared=False)[:1], machine(M910), panel_readers(False)[1]).timing
    assert t.l2_hit_bytes == 0 and t.hbm_bytes == 2 * 64 * 512 * 2
    assert t.core_time_ns[0] == pytest.approx(t.core_time_ns[1])


def test_lru_l2_smaller_than_the_working_set_thrashes():
    """Core 0 reads eight L2 blocks (32 rows x 256 B) one transfer each, twice over."""
    def kernel(k, a, c):
        if k.core_id == 0:
            l1 = k.alloc("L1", (32, 128), "fp16")
            for _ in range(2):
                for rb in range(2):
                    for cb in range(4):
                        k.copy(l1, a[32 * rb:32 * (rb + 1), 128 * cb:128 * (cb + 1)])

    spec = machine(M910)
    args = [TensorArg("a", (64, 512), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]
    panel = 64 * 512 * 2
    roomy = simulate(kernel, spec, args).timing
    assert roomy.l2_hit_bytes == panel and roomy.hbm_bytes == panel
    half = spec.model_copy(update={"gm": spec.gm.model_copy(update={"l2_bytes": panel // 2})})
    thrash = simulate(kernel, half, args).timing          # LRU: each block is evicted before its reuse
    assert thrash.l2_hit_bytes == 0 and thrash.hbm_bytes == 2 * panel
    assert thrash.cycles > roomy.cycles


def test_reading_a_tensor_row_by_row_fetches_every_byte_from_hbm():
    rows, cols = 128, 1024

    def row_by_row(k, a, c):
        if k.core_id == 0:
            buf = k.alloc("L1", (rows, cols), "fp16")
            for r in range(rows):
                k.copy(buf[r:r + 1, :], a[r:r + 1, :])

    args = [TensorArg("a", (rows, cols), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]
    t = simulate(row_by_row, machine(M910), args).timing
    assert t.l2_hit_bytes == 0 and t.hbm_bytes == rows * cols * 2


# ---------------------------------------------------------------- issue cost
def test_swarm_of_tiny_copies_costs_more_than_one_big_copy():
    rows, cols = 64, 1024                                   # 128 KiB of fp16, written to GM

    def one_big(k, a, c):
        if k.core_id == 0:
            ub = k.alloc("UB", (rows, cols), "fp16")
            k.copy(c, ub)

    def row_by_row(k, a, c):
        if k.core_id == 0:
            ub = k.alloc("UB", (rows, cols), "fp16")
            for r in range(rows):
                k.copy(c[r:r + 1, :], ub[r:r + 1, :])

    spec = machine(M910)
    args = [TensorArg("a", (1, 1), "fp16"), TensorArg("c", (rows, cols), "fp16", "output")]
    big = simulate(one_big, spec, args).timing
    swarm = simulate(row_by_row, spec, args).timing
    assert big.bytes_by_path == swarm.bytes_by_path == {"UB->GM": rows * cols * 2}
    assert big.hbm_bytes == swarm.hbm_bytes == rows * cols * 2
    setup = spec.path("UB", "GM").setup_cycles
    rate = min(spec.path("UB", "GM").bytes_per_cycle, spec.gm.core_write_bytes_per_cycle)   # writes land in L2
    assert rate == 64
    assert big.cycles == pytest.approx(spec.issue_cycles + setup + rows * cols * 2 / rate)
    # every extra transfer pays the path's setup on MTE3 (its issue overlaps the previous one)
    assert swarm.cycles == pytest.approx(big.cycles + (rows - 1) * setup)


def test_vector_ops_cost_issue_and_startup_per_instruction():
    def many(k, a, c):
        if k.core_id == 0:
            x = k.alloc("UB", (64, 64), "fp32")
            for r in range(64):
                k.adds(x[r:r + 1, :], x[r:r + 1, :], 1.0)

    def one(k, a, c):
        if k.core_id == 0:
            x = k.alloc("UB", (64, 64), "fp32")
            k.adds(x, x, 1.0)

    spec = machine(M910)
    args = [TensorArg("a", (1, 1), "fp32"), TensorArg("c", (1, 1), "fp32", "output")]
    t_many = simulate(many, spec, args).timing
    t_one = simulate(one, spec, args).timing
    vec = spec.vector
    # one op over 16 KiB: 64 repeats of 256 B plus one startup
    assert t_one.cycles == pytest.approx(spec.issue_cycles + 64 * 64 * 4 / vec.bytes_per_cycle + vec.startup_cycles)
    # 64 ops of one repeat each: each pays its startup; issuing overlaps the previous op, except the first
    assert t_many.cycles == pytest.approx(spec.issue_cycles + 64 * (1 + vec.startup_cycles))


# ---------------------------------------------------------------- L2 residency = what was charged
def sliver_pretouch(pretouch: bool):
    """Core 0 loads a 64 x 512 fp16 panel (8 L2 blocks of 32 rows x 256 B); the gaming variant
    first reads a 32-B sliver of every 256-B block row, hoping the whole rows turn resident."""
    def kernel(k, a, c):
        if k.core_id == 0:
            l1 = k.alloc("L1", (64, 512), "fp16")
            if pretouch:
                for cb in range(4):
                    k.copy(l1[:, 0:16], a[:, 128 * cb:128 * cb + 16])
            k.copy(l1, a)
    return kernel, [TensorArg("a", (64, 512), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]


def test_pretouching_slivers_buys_no_hits_beyond_what_it_paid():
    spec = machine(M910)
    plain = simulate(sliver_pretouch(False)[0], spec, sliver_pretouch(False)[1]).timing
    gaming = simulate(sliver_pretouch(True)[0], spec, sliver_pretouch(True)[1]).timing
    panel, slivers = 64 * 512 * 2, 4 * 64 * spec.gm.sector_bytes
    assert plain.l2_hit_bytes == 0 and plain.hbm_bytes == panel
    # the slivers were fetched once (paid) and hit once; the rest of every row still comes from HBM
    assert gaming.hbm_bytes == panel and gaming.l2_hit_bytes == slivers
    assert gaming.cycles > plain.cycles


def test_l2_hits_are_the_sectors_touched_before(rng):
    """Independent formula: with an L2 larger than the tensor, a run of reads on one core misses
    on exactly the distinct (row, 32-B sector) cells it touches and hits on every repeat."""
    rows, cols, views = 96, 200, []                           # fp16 rows of 400 B: 12.5 sectors
    for _ in range(40):
        r0, c0 = int(rng.integers(0, rows)), int(rng.integers(0, cols))
        r1, c1 = int(rng.integers(r0 + 1, min(rows, r0 + 40) + 1)), int(rng.integers(c0 + 1, min(cols, c0 + 96) + 1))
        views.append((r0, r1, c0, c1))

    def kernel(k, a, c):
        if k.core_id == 0:
            ub = k.alloc("UB", (40, 96), "fp16")
            for r0, r1, c0, c1 in views:
                k.copy(ub[0:r1 - r0, 0:c1 - c0], a[r0:r1, c0:c1])

    spec = machine(M910)
    t = simulate(kernel, spec, [TensorArg("a", (rows, cols), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]).timing
    sector = spec.gm.sector_bytes
    seen = np.zeros((rows, -(-cols * 2 // sector)), bool)
    charged = 0
    for r0, r1, c0, c1 in views:
        s0, s1 = c0 * 2 // sector, -(-c1 * 2 // sector)
        charged += (r1 - r0) * (s1 - s0) * sector
        seen[r0:r1, s0:s1] = True
    assert t.hbm_bytes == int(seen.sum()) * sector
    assert t.l2_hit_bytes == charged - t.hbm_bytes


# ---------------------------------------------------------------- trusted-side work budget
def test_l2_work_counts_the_blocks_the_engine_walks():
    """l2_work (from geometry alone) = the block entries the engine builds x how often each transfer runs."""
    spec = machine(M910)
    t = simulate(library_kernel("sgemm_cube"), spec, gemm_args(256, 512, 384, "fp32")).trace
    index = {d.id: i for i, d in enumerate(t.tensors)}
    shapes = {d.id: d.shape for d in t.tensors}
    counts: dict[int, int] = {}
    for ops in t.ops:
        for op in ops:
            counts[id(op)] = counts.get(id(op), 0) + 1
    expected = 0
    for op in t.distinct_ops():
        if op.kind == "copy" and "GM" in (op.src[0].space, op.dst[0].space):
            g = op.dst[0] if op.dst[0].space == "GM" else op.src[0]
            expected += len(_GmAccess(op, spec, index, shapes[g.base]).blocks) * counts[id(op)]
    assert l2_work(t, spec) == expected > 0


@pytest.mark.parametrize("shape", [(96, 200), (3, 40, 50), (2, 3, 70, 24), (5000, 3, 8)])
def test_block_count_matches_the_blocks_built(shape, rng):
    """For random views of 2-D to 4-D tensors: exact, or (many runs at odd strides) an upper bound."""
    gm = machine(M910).gm
    for _ in range(30):
        offset = tuple(int(rng.integers(0, s)) for s in shape)
        extent = tuple(int(rng.integers(1, s - o + 1)) for s, o in zip(shape, offset))
        view = View("GM", 0, 0, offset, extent, (True,) * len(shape), "fp16")
        op = Op("copy", (View.whole("UB", 1, 0, extent, "fp16"),), (view,), (), 0)
        built = len(_GmAccess(op, machine(M910), {0: 0}, shape).blocks)
        counted = _block_entries(view, shape, gm.l2_block_rows, gm.l2_block_bytes // gm.sector_bytes,
                                 8 * gm.sector_bytes)
        assert counted == built if prod(extent[:-2]) <= 4096 else counted >= built


def test_thin_copies_over_many_blocks_fail_fast_with_the_numbers():
    """A forged trace: one copy of a column slice spanning 8,192 L2 blocks, issued 5,000 times on
    every core (1.3e9 block touches, most of an hour of trusted CPU), is refused before any block
    is walked: the check costs a pass over the ops, not over the blocks."""
    spec = machine(M910)

    def kernel(k, a, c):
        if k.core_id == 0:
            buf = k.alloc("L1", (8192, 1, 1), "fp16")
            k.copy(buf, a[:, 0:1, 0:1])

    args = [TensorArg("a", (8192, 32, 16), "fp16"), TensorArg("c", (1, 1), "fp32", "output")]
    recorded = simulate(kernel, spec, args).trace
    (op,) = recorded.ops[0]
    assert l2_work(recorded, spec) == 8192
    forged = Trace(recorded.machine, recorded.tensors, recorded.buffers,
                   tuple((op,) * 5_000 for _ in recorded.ops))
    started = time.process_time()                           # CPU time: other jobs on the machine don't count
    with pytest.raises(BudgetError, match=r"1,310,720,000 L2 block touches.*8,192 L2 blocks.*160,000 times"):
        simulate_timing(forged, spec)
    assert time.process_time() - started < 1.0
    assert BudgetError.rule == "trusted budget" and issubclass(BudgetError, HwError)
    assert l2_work(forged, spec) > MAX_L2_BLOCK_TOUCHES


# ---------------------------------------------------------------- the compiled bandwidth profile
needs_numba = pytest.mark.skipif(not timing._HAVE_NUMBA, reason="numba is not installed")


@needs_numba
@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(0, 5000), st.sampled_from([1, 32.0, 64, 300.0]),
                          st.booleans()), min_size=1, max_size=60))
@settings(max_examples=60, deadline=None)
def test_compiled_profile_moves_bytes_bit_for_bit_like_the_lists(requests):
    plain, compiled = _Bandwidth(400, 1000.0), _Bandwidth(400, 1000.0, compiled=True)
    for t, nbytes, cap, hbm in requests:
        assert compiled.move(t, nbytes, cap, hbm) == plain.move(t, nbytes, cap, hbm)
    assert compiled.segments() == plain.segments()


@needs_numba
def test_compiled_profile_grows_and_forgets_like_the_lists():
    rng = np.random.default_rng(5)
    plain, compiled = _Bandwidth(100.0, 300.0), _Bandwidth(100.0, 300.0, compiled=True)
    t = 0.0
    for step in range(6000):             # > 4,096 segments kept: the arrays double
        t += float(rng.uniform(0, 3))
        nbytes, cap, hbm = int(rng.integers(1, 4000)), float(rng.choice([32.0, 64.0, 128.0])), bool(step % 3)
        assert compiled.move(t, nbytes, cap, hbm) == plain.move(t, nbytes, cap, hbm)
        if step % 500 == 499:
            plain.forget_before(t - 200.0)
            compiled.forget_before(t - 200.0)
            assert compiled.segments() == plain.segments()
    assert compiled.segments() == plain.segments()


@needs_numba
@pytest.mark.parametrize("name,machine_name,args", [
    ("sgemm_cube", M910, gemm_args(256, 512, 256, "fp32")),
    ("hgemm_cube", M910, gemm_args(512, 256, 512, "fp16")),
    ("attention_flash", M910, get_task("attention").args((1, 2, 256, 64)))])
def test_engine_gives_the_same_result_compiled_and_in_python(name, machine_name, args, monkeypatch):
    """The compiled loop (hwmodel._timing_engine) and the Python loop, each with its own bandwidth
    profile, and the Python loop on the compiled profile: one result, bit for bit."""
    spec = machine(machine_name)
    trace = simulate(library_kernel(name), spec, list(args)).trace
    monkeypatch.setattr(timing, "COMPILED_MIN_OPS", 10**12)
    plain = simulate_timing(trace, spec)
    plain_recorded = simulate_timing(trace, spec, timeline_core=0, record_transfers=True)
    monkeypatch.setattr(timing, "COMPILED_MIN_OPS", 0)
    assert simulate_timing(trace, spec) == plain                      # the compiled loop
    assert simulate_timing(trace, spec, timeline_core=0, record_transfers=True) == plain_recorded
    assert (plain_recorded.cycles, plain_recorded.pipe_busy, plain_recorded.l2_hit_bytes) == (
        plain.cycles, plain.pipe_busy, plain.l2_hit_bytes)


@pytest.mark.parametrize("compiled_loop", [False, True])
def test_a_decoded_trace_times_like_the_recorded_one(compiled_loop, monkeypatch):
    """Decoded traces give the engine their distinct ops and counts from their arrays (Trace.op_ids)."""
    from evaluator.codec import decode, encode
    monkeypatch.setattr(timing, "COMPILED_MIN_OPS", 0 if compiled_loop else 10**12)
    spec = machine(M910)
    recorded = simulate(library_kernel("sgemm_cube"), spec, gemm_args(256, 512, 384, "fp32")).trace
    decoded = decode(encode(recorded))
    assert decoded.op_ids is not None
    assert simulate_timing(decoded, spec) == simulate_timing(recorded, spec)
    assert l2_work(decoded, spec) == l2_work(recorded, spec)


def _corpus_cases_for_the_compiled_loop():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import timing_corpus
    return timing_corpus, [c for c in timing_corpus.cases()             # other machines' pipes and core counts;
                           if c.machine != M910 or c.family in ("qgemm_int8", "attention_xyserve", "sgemm_termwise")]


@needs_numba
def test_the_compiled_loop_reproduces_the_frozen_corpus(monkeypatch):
    """The corpus test runs its small cases through the Python loop: here they go through the compiled
    one (910B, h100, and 910A families with GM workspaces and barriers), bit for bit."""
    import json
    timing_corpus, cases = _corpus_cases_for_the_compiled_loop()
    frozen = json.loads(timing_corpus.CORPUS.read_text())["timing"]
    monkeypatch.setattr(timing, "COMPILED_MIN_OPS", 0)
    for case in cases:
        current = json.loads(json.dumps(timing_corpus.timing_figures(case)))
        assert timing_corpus.differences(frozen[case.name], current) == [], case.name

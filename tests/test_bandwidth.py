"""HBM and L2 bandwidth are each one resource of the chip: whatever mix of cores and pipes
(reads on MTE2, writes on MTE3, on the 910B the vector side's and FixPipe's GM pipes too)
a kernel uses, the bytes it moves in any window of simulated time fit in the window at the
preset's rate. Checked on every GM transfer's recorded interval, for the library families
and for hostile kernels that read and write at once on every core."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from helpers import gemm_args, library_kernel, machine, rel_fro_error, trace
from hwmodel.simulate import TensorArg, simulate
from hwmodel.timing import _Bandwidth, simulate_timing

pytestmark = pytest.mark.sim

HBM, L2 = 4, 5          # fields of a recorded transfer: (core, pipe, start, end, HBM bytes, L2 bytes)


def worst_excess(transfers, field: int, bytes_per_cycle: float, starts: int = 400) -> tuple[float, float, float]:
    """(bytes over the rate, window start, window end) of the worst window [t1, t2]: the bytes of the
    transfers that lie wholly inside it (they moved inside it, whatever their rate profile) minus
    what the rate allows in it. Window starts are transfer starts (up to `starts` of them, evenly
    spread), window ends every transfer end; <= 0 means no window holds more than the rate allows."""
    rec = np.array([(s, e, b[field - HBM]) for _, _, s, e, *b in transfers], dtype=float).reshape(-1, 3)
    order = np.argsort(rec[:, 1], kind="stable")
    start, end, nbytes = rec[order, 0], rec[order, 1], rec[order, 2]
    t1s = np.unique(start)
    if len(t1s) > starts:
        t1s = t1s[np.linspace(0, len(t1s) - 1, starts).round().astype(int)]
    worst = (-np.inf, 0.0, 0.0)
    for t1 in t1s:
        inside = start >= t1
        excess = np.cumsum(np.where(inside, nbytes, 0.0)) - bytes_per_cycle * (end - t1)
        excess[~inside] = -np.inf
        j = int(np.argmax(excess))
        if excess[j] > worst[0]:
            worst = (float(excess[j]), float(t1), float(end[j]))
    return worst


def assert_within_rates(spec, result) -> None:
    assert result.transfers, "record_transfers gave no GM transfers"
    for field, name, rate in ((HBM, "HBM", spec.hbm_bytes_per_cycle), (L2, "L2", spec.l2_bytes_per_cycle)):
        excess, t1, t2 = worst_excess(result.transfers, field, rate)
        total = sum(t[field] for t in result.transfers)
        assert excess <= 1e-6 * total, (
            f"{name}: the transfers inside cycles [{t1:.0f}, {t2:.0f}] move {excess:.0f} B more than "
            f"{rate:.1f} B/cycle allows")


def timed(name: str, machine_name: str, args, **knobs):
    spec = machine(machine_name)
    return spec, simulate_timing(trace(library_kernel(name, **knobs), machine_name, *args), spec,
                                 record_transfers=True)


# ---------------------------------------------------------------- the checker itself
def test_checker_flags_two_full_rate_transfers_at_once():
    rate = 100.0
    alone = [(0, "MTE2", 0.0, 10.0, 1000, 1000), (1, "MTE2", 10.0, 20.0, 1000, 1000)]
    together = [(0, "MTE2", 0.0, 10.0, 1000, 1000), (1, "MTE3", 0.0, 10.0, 1000, 1000)]
    assert worst_excess(alone, HBM, rate)[0] <= 0
    assert worst_excess(together, HBM, rate)[0] == pytest.approx(1000)


def hostile(k, x, y):
    """Every core streams its rows of x in (MTE2) and out to y (MTE3) at once, double buffered."""
    rows = x.shape[0] // k.num_cores
    ub = k.alloc("UB", (8, x.shape[1]), "fp32", count=2)
    for s, r in enumerate(range(k.core_id * rows, (k.core_id + 1) * rows, 8)):
        k.copy(ub[s % 2], x[r:r + 8, :])
        k.copy(y[r:r + 8, :], ub[s % 2])


def hostile_args(spec):
    rows = 64 * spec.num_cores
    return [TensorArg("x", (rows, 1024), "fp32"), TensorArg("y", (rows, 1024), "fp32", "output")]


def test_checker_catches_a_per_transfer_bandwidth_model(monkeypatch):
    """The old model (each transfer at its own link rate, no chip-wide cap) fails the check."""
    monkeypatch.setattr(_Bandwidth, "move", lambda self, t, nbytes, cap, hbm: t + nbytes / cap)
    spec = machine("ascend-910a")
    result = simulate_timing(trace(hostile, spec.name, *hostile_args(spec)), spec, record_transfers=True)
    with pytest.raises(AssertionError, match="HBM"):
        assert_within_rates(spec, result)


# ---------------------------------------------------------------- hostile kernels
@pytest.mark.parametrize("machine_name", ["ascend-910a", "ascend-910b", "h100"])
def test_reading_and_writing_at_once_on_every_core_shares_one_hbm(machine_name):
    spec = machine(machine_name)
    args = hostile_args(spec)
    result = simulate_timing(trace(hostile, machine_name, *args), spec, record_transfers=True)
    assert_within_rates(spec, result)
    moved = 2 * args[0].shape[0] * args[0].shape[1] * 4
    assert result.hbm_bytes == moved
    assert result.cycles >= moved / spec.hbm_bytes_per_cycle
    # work-conserving: idle bandwidth goes to whoever transfers, so the chip runs near its rate
    assert result.cycles <= 1.15 * moved / spec.hbm_bytes_per_cycle + 5 * spec.gm.hbm_latency_cycles


def split_core_hostile(k, x, y, z):
    """910B: the cube side writes z through FixPipe while the vector side reads x and writes y."""
    rows = x.shape[0] // k.num_cores
    ub = k.alloc("UB", (16, x.shape[1]), "fp32", count=2)
    acc = k.alloc("L0C", (16, 128), "fp32")
    for s, r in enumerate(range(k.core_id * rows, (k.core_id + 1) * rows, 16)):
        k.copy(ub[s % 2], x[r:r + 16, :])
        k.copy(y[r:r + 16, :], ub[s % 2])
        k.copy(z[r:r + 16, :], acc)


def test_910b_vector_and_cube_gm_pipes_share_one_hbm():
    spec = machine("ascend-910b")
    rows = 64 * spec.num_cores
    args = [TensorArg("x", (rows, 1024), "fp32"), TensorArg("y", (rows, 1024), "fp32", "output"),
            TensorArg("z", (rows, 128), "fp32", "output")]
    result = simulate_timing(trace(split_core_hostile, spec.name, *args), spec, record_transfers=True)
    assert {"MTE2V", "MTE3V", "FIX"} <= {t[1] for t in result.transfers}
    assert_within_rates(spec, result)
    assert result.cycles >= result.hbm_bytes / spec.hbm_bytes_per_cycle


def test_one_core_alone_gets_its_whole_link():
    """Bandwidth that no one else uses is not held back (no static 1/active-cores split)."""
    spec = machine("h100")

    def one_reader(k, x, y):
        if k.core_id == 0:
            buf = k.alloc("L1", (64, 1024), "fp16")
            k.copy(buf, x)

    t = simulate_timing(trace(one_reader, "h100", TensorArg("x", (64, 1024), "fp16"),
                              TensorArg("y", (1, 1), "fp32", "output")), spec, record_transfers=True)
    (_, _, start, end, hbm, _), = t.transfers
    assert end - start == pytest.approx(spec.path("GM", "L1").setup_cycles + hbm / spec.gm.core_hbm_bytes_per_cycle)


# ---------------------------------------------------------------- library families
LIBRARY = [
    ("sgemm_cube", "ascend-910a", gemm_args(1024, 1024, 1024, "fp32"), {}),         # phase 1 reads 4 B, writes 4 B
    ("sgemm_cube", "ascend-910a", gemm_args(512, 512, 512, "fp32"), {"ON_THE_FLY": True}),
    ("sgemm_termwise", "ascend-910a", gemm_args(512, 512, 512, "fp32"), {}),
    ("hgemm_cube", "ascend-910a", gemm_args(1024, 1024, 1024, "fp16"), {}),
    ("hgemm_cube", "ascend-910b", gemm_args(1024, 1024, 1024, "fp16"), {"BM": 128, "BN": 256}),
    ("hgemm_cube", "h100", gemm_args(2048, 2048, 2048, "fp16"), {"BM": 128, "BN": 128, "BK1": 192, "BK": 64}),
    ("qgemm_int8", "ascend-910a", gemm_args(512, 512, 512, "fp32"), {}),
    ("attention_flash", "ascend-910a", [TensorArg(n, (1, 256, 64, 128), "fp16") for n in "qkv"]
     + [TensorArg("o", (1, 256, 64, 128), "fp16", "output")], {"BQ": 64, "BKV": 128}),
]


@pytest.mark.parametrize("name,machine_name,args,knobs", LIBRARY,
                         ids=[f"{n}-{m}-{i}" for i, (n, m, _, _) in enumerate(LIBRARY)])
def test_library_kernels_stay_within_hbm_and_l2_rates(name, machine_name, args, knobs):
    spec, result = timed(name, machine_name, args, **knobs)
    assert_within_rates(spec, result)


def test_sgemm_split_phase_moves_at_most_the_hbm_rate():
    """Phase 1 of SGEMM-cube reads 4 B and writes 4 B per element on every core at once (it moved
    1.78 TB/s on the 1.2 TB/s 910A when each direction had the full share; now 1.16)."""
    spec, n = machine("ascend-910a"), 2048
    recorded = trace(library_kernel("sgemm_cube"), spec.name, *gemm_args(n, n, n, "fp32"))
    result = simulate_timing(recorded, spec, timeline_core=0, record_transfers=True)
    barrier = next(i for i, op in enumerate(recorded.ops[0]) if op.kind == "barrier")
    release = min(start for i, _, start, _ in result.timeline if i > barrier)
    phase = [t for t in result.transfers if t[3] <= release]
    assert {t[1] for t in phase} == {"MTE2", "MTE3"}
    moved = sum(t[HBM] for t in phase)
    assert moved == n * n * 2 * 8                                    # A and B: 4 B in, 2 + 2 B out
    assert moved / max(t[3] for t in phase) <= spec.hbm_bytes_per_cycle * (1 + 1e-9)


# ---------------------------------------------------------------- the shared resource
@given(st.lists(st.tuples(st.floats(0, 1000), st.floats(1, 5000), st.floats(1, 300), st.booleans()),
                min_size=1, max_size=40))
def test_bandwidth_never_exceeds_capacity_and_delivers_every_byte(requests):
    """Transfers placed in any order: usage stays within both capacities, the bytes reserved add
    up to the bytes asked for, and none finishes faster than its own cap allows."""
    bw = _Bandwidth(hbm_bytes_per_cycle=400.0, l2_bytes_per_cycle=1000.0)
    asked = {True: 0.0, False: 0.0}
    for t, nbytes, cap, hbm in requests:
        end = bw.move(t, nbytes, cap, hbm)
        assert end >= t + nbytes / cap * (1 - 1e-9)
        asked[True] += nbytes if hbm else 0.0
        asked[False] += nbytes
    assert max(bw.hbm) <= 400.0 * (1 + 1e-9) and max(bw.l2) <= 1000.0 * (1 + 1e-9)
    spans = np.diff(bw.times)
    assert float(np.dot(bw.hbm[:-1], spans)) == pytest.approx(asked[True], rel=1e-6, abs=1e-6)
    assert float(np.dot(bw.l2[:-1], spans)) == pytest.approx(asked[False], rel=1e-6, abs=1e-6)
    assert bw.hbm[-1] == 0 and bw.l2[-1] == 0


def test_a_transfer_waits_while_the_resource_is_full():
    bw = _Bandwidth(hbm_bytes_per_cycle=100.0, l2_bytes_per_cycle=100.0)
    assert bw.move(0.0, 1000.0, 100.0, True) == pytest.approx(10.0)      # takes all of [0, 10)
    assert bw.move(5.0, 500.0, 100.0, True) == pytest.approx(15.0)       # waits until 10
    assert bw.move(0.0, 100.0, 50.0, False) == pytest.approx(17.0)       # L2 too is full until 15



# ---------------------------------------------------------------- attention on every preset that can run it
ATTENTION_FITS = {"ascend-910a": {}, "h100": {"BQ": 16, "BKV": 128, "KV_STEP": 32, "SLOTS": 2}}


@pytest.mark.parametrize("machine_name", sorted(ATTENTION_FITS))
def test_attention_family_has_knobs_that_fit_and_stay_within_rates(machine_name, rng):
    """The flash-attention family's space holds a point that fits each coupled-core preset at head
    dim 128 (h100: 64 KiB of UB, 32 KiB of L0B), computes attention, and moves no more than the rates."""
    from strategies.families import FAMILIES
    family = FAMILIES["attention_flash"]
    knobs = {**family.defaults(), **ATTENTION_FITS[machine_name]}
    assert all(v in family.space[k] for k, v in knobs.items()), knobs
    spec, shape = machine(machine_name), (1, 2, 256, 128)
    args = [TensorArg(n, shape, "fp16") for n in ("q", "key", "v")] + [TensorArg("o", shape, "fp16", "output")]
    data = {n: rng.standard_normal(shape).astype(np.float16) for n in ("q", "key", "v")}
    result = simulate(library_kernel("attention_flash", **knobs), spec, args, data)
    q, k, v = (data[n].astype(np.float64) for n in ("q", "key", "v"))
    logits = q @ np.swapaxes(k, -1, -2) / np.sqrt(shape[-1])
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    ref = (p / p.sum(axis=-1, keepdims=True)) @ v
    assert rel_fro_error(result.outputs["o"], ref) < 3e-3
    assert_within_rates(spec, simulate_timing(result.trace, spec, record_transfers=True))

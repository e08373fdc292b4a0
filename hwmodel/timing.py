"""The timing engine: in-order pipes per core, buffer hazards, shared GM with an L2.

Each op waits for its pipe, for the scalar unit to issue it, and for the buffers it
touches (read-after-write, write-after-read, write-after-write); overlap between pipes
therefore emerges from double buffering. GM transfers are processed across cores in
simulated time order: an LRU L2 tracks which GM sectors of each block of a tensor are
resident (exactly what a transfer paid for, no more). The chip's HBM and L2 bandwidth are
each one resource shared by every transfer of every core and pipe (reads and writes): a
transfer moves at its per-core link rate or at what the others leave, whichever is lower.
"""
from __future__ import annotations

import heapq
from bisect import bisect_right
from collections import OrderedDict, Counter
from itertools import chain
from dataclasses import dataclass, field
from functools import cache
from importlib.util import find_spec
from math import ceil, prod

import numpy as np

from hwmodel.dsl import Trace, paused_gc
from hwmodel.dtypes import BITS
from hwmodel.errors import BudgetError
from hwmodel.limits import MAX_L2_BLOCK_TOUCHES
from hwmodel.ops import Op, static_cost
from hwmodel.spec import MachineSpec


@dataclass(frozen=True)
class TimingResult:
    """Simulated time of one trace, and where it went."""

    cycles: float
    time_ns: float
    core_time_ns: tuple[float, ...]
    pipe_busy: dict[str, float]           # busy fraction of the total time, mean over active cores
    bytes_by_path: dict[str, int]
    op_counts: dict[str, int]
    l2_hit_bytes: int
    hbm_bytes: int
    active_cores: int
    timeline: tuple[tuple[int, str, float, float], ...] = field(default=(), repr=False)  # (op index, pipe, start, end) of one core
    # with record_transfers: every GM transfer as (core, pipe, start, end, HBM bytes, L2 bytes) in cycles;
    # every GM byte crosses L2, misses and writes also HBM
    transfers: tuple[tuple[int, str, float, float, int, int], ...] = field(default=(), repr=False)

    @property
    def l2_hit_rate(self) -> float:
        total = self.l2_hit_bytes + self.hbm_bytes
        return self.l2_hit_bytes / total if total else 0.0

    @property
    def busiest_pipe(self) -> tuple[str, float]:
        return max(self.pipe_busy.items(), key=lambda kv: kv[1]) if self.pipe_busy else ("S", 0.0)


class _GmAccess:
    """Static facts of one GM transfer: the sectors of each L2 block it touches, bytes charged, link rates.

    An L2 block is `l2_block_rows` rows x `l2_block_bytes // sector_bytes` sectors; its residency is
    one bit per (row, sector), bit row * sectors_per_block + sector. A transfer charges whole sectors
    and marks exactly the sectors it charged, so hit bytes = resident & touched bits x sector bytes.
    """

    __slots__ = ("_blocks", "is_write", "charged_bytes", "path_bpc", "setup", "pipe_index", "hit_cap", "miss_cap",
                 "blocks_per_row", "tensor", "origin", "delta")

    def __init__(self, op: Op, machine: MachineSpec, tensor_index: dict[int, int], base_shape: tuple[int, ...]):
        (dst,), (src,) = op.dst, op.src
        self.is_write = dst.space == "GM"
        view = dst if self.is_write else src
        path = machine.path(src.space, dst.space)
        self.path_bpc = path.bytes_per_cycle
        self.setup = path.setup_cycles
        self.pipe_index = machine.pipes.index(path.pipe)
        gm = machine.gm
        self.hit_cap = min(path.bytes_per_cycle, gm.core_l2_bytes_per_cycle)     # this core's link, L2 hits
        self.miss_cap = min(path.bytes_per_cycle,                                 # misses; writes go to L2
                            gm.core_write_bytes_per_cycle if self.is_write else gm.core_hbm_bytes_per_cycle)
        sector, per_block, s0, s1, blocks_per_row = _sector_geometry(view, gm, base_shape)
        self.blocks_per_row = blocks_per_row
        runs = _row_runs(view.offset[:-1], view.extent[:-1], base_shape[:-1])
        self.charged_bytes = sum(r1 - r0 for r0, r1 in runs) * (s1 - s0) * sector
        tensor = self.tensor = tensor_index[view.base]
        self.origin, self.delta = self, 0     # built here, not moved from another transfer
        br = gm.l2_block_rows
        repunit = ((1 << (per_block * br)) - 1) // ((1 << per_block) - 1)   # bit 0 of every row of a block
        col_masks = []   # (block column, its sectors touched in one row)
        for cb in range(s0 // per_block, (s1 - 1) // per_block + 1):
            a, b = max(s0, cb * per_block) - cb * per_block, min(s1, (cb + 1) * per_block) - cb * per_block
            col_masks.append((cb, ((1 << (b - a)) - 1) << a))
        blocks: list[tuple[int, int]] = []   # (block key, mask of its (row, sector) bits touched)
        for r0, r1 in runs:
            for rb in range(r0 // br, (r1 - 1) // br + 1):
                lo, hi = max(r0, rb * br) - rb * br, min(r1, (rb + 1) * br) - rb * br
                rows = (repunit >> (per_block * (br - (hi - lo)))) << (per_block * lo)
                for cb, cols in col_masks:
                    blocks.append(((tensor << 40) | (rb * blocks_per_row + cb), rows * cols))
        self._blocks = tuple(blocks)

    @property
    def blocks(self) -> tuple[tuple[int, int], ...]:
        """(block key, mask of its (row, sector) bits touched) of every L2 block the transfer touches."""
        if self._blocks is None:
            self._blocks = tuple([(key + self.delta, cells) for key, cells in self.origin._blocks])
        return self._blocks

    def moved(self, delta: int, tensor: int) -> "_GmAccess":
        """The same transfer at block keys `delta` further on, in `tensor`: another tensor or another
        row of blocks, at the same place within them (GM tiles of one shape repeat across a tensor)."""
        new = _GmAccess.__new__(_GmAccess)
        new.is_write, new.charged_bytes, new.path_bpc, new.setup = (self.is_write, self.charged_bytes,
                                                                    self.path_bpc, self.setup)
        new.pipe_index, new.hit_cap, new.miss_cap = self.pipe_index, self.hit_cap, self.miss_cap
        new.blocks_per_row, new.tensor, new.origin = self.blocks_per_row, tensor, self.origin
        new.delta, new._blocks = self.delta + delta, None
        return new


_NEVER = float("inf")
# Traces of at least this many ops run the compiled loop (hwmodel._timing_engine; with a timeline
# or recorded transfers, the Python loop on the compiled bandwidth profile) when numba is
# installed: the same results, 3-5x faster, after ~0.5 s once per process to import numba and
# load the cached machine code (the first compile, ~10 s, is cached in __pycache__).
COMPILED_MIN_OPS = 100_000
_HAVE_NUMBA = find_spec("numba") is not None


@cache
def compiled_loop_loads() -> bool:
    """Whether numba imports and the compiled modules load (once per process; a broken numba
    install leaves timing to the Python loop, with the same results, instead of failing it)."""
    try:
        import hwmodel._timing_engine  # noqa: F401
    except ImportError:
        return False
    return True


class _Bandwidth:
    """The chip's HBM and L2 bandwidth over simulated time, shared by every transfer of every core.

    Usage is piecewise constant: segment i is [times[i], times[i+1]) (the last runs to infinity)
    with hbm[i] and l2[i] bytes/cycle in use. A transfer takes, from its start, whatever is left
    of its resources up to its own rate cap (per-core link, DMA), segment by segment, until its
    bytes are moved; so the sum over all transfers never exceeds either capacity, and a
    transfer waits (rate 0) while the resource is full. Every GM byte crosses L2; misses and
    writes also cross HBM. Deterministic: transfers are placed in the engine's processing order.
    """

    __slots__ = ("times", "hbm", "l2", "hbm_cap", "l2_cap", "_eps", "_compiled", "_count")

    def __init__(self, hbm_bytes_per_cycle: float, l2_bytes_per_cycle: float, compiled: bool = False):
        self.hbm_cap = float(hbm_bytes_per_cycle)      # floats: the same values, one compiled signature
        self.l2_cap = float(l2_bytes_per_cycle)
        self._eps = 1e-9 * max(hbm_bytes_per_cycle, l2_bytes_per_cycle)
        self._compiled = None
        if compiled:   # the same profile in numpy arrays, moved by hwmodel._timing_engine (numba)
            from hwmodel._timing_engine import move
            self._compiled = move
            self.times, self.hbm, self.l2 = np.zeros(4096), np.zeros(4096), np.zeros(4096)
            self._count = np.ones(1, np.int64)
        else:
            self.times, self.hbm, self.l2 = [0.0], [0.0], [0.0]

    def segments(self) -> tuple[list[float], list[float], list[float]]:
        """(start times, HBM use, L2 use) of the segments kept."""
        if self._compiled is None:
            return list(self.times), list(self.hbm), list(self.l2)
        n = int(self._count[0])
        return self.times[:n].tolist(), self.hbm[:n].tolist(), self.l2[:n].tolist()

    def forget_before(self, t: float) -> None:
        """Drop the segments that end before t (no transfer starts before it any more)."""
        if self._compiled is not None:
            n = int(self._count[0])
            k = int(np.searchsorted(self.times[:n], t, side="right")) - 1
            if k > 64:
                for arr in (self.times, self.hbm, self.l2):
                    arr[:n - k] = arr[k:n]       # numpy copies overlapping ranges correctly
                self._count[0] = n - k
            return
        k = bisect_right(self.times, t) - 1
        if k > 64:
            del self.times[:k], self.hbm[:k], self.l2[:k]

    def _split(self, t: float) -> int:
        """Index of the segment that starts at t (splitting the one containing t)."""
        times = self.times
        i = bisect_right(times, t) - 1
        if times[i] == t:
            return i
        times.insert(i + 1, t)
        self.hbm.insert(i + 1, self.hbm[i])
        self.l2.insert(i + 1, self.l2[i])
        return i + 1

    def move(self, t: float, nbytes: float, cap: float, hbm: bool) -> float:
        """Move nbytes from time t at up to `cap` bytes/cycle (through HBM too when `hbm`);
        reserve the rate taken and return the time the last byte arrives."""
        if nbytes <= 0:
            return t
        if self._compiled is not None:
            while True:
                end = self._compiled(self.times, self.hbm, self.l2, self._count, float(t), float(nbytes), float(cap),
                                     hbm, self.hbm_cap, self.l2_cap, self._eps)
                if end >= 0.0:
                    return end
                n = int(self._count[0])       # no room for two more segments: double the arrays
                self.times, self.hbm, self.l2 = (np.concatenate([a[:n], np.zeros(n)])
                                                 for a in (self.times, self.hbm, self.l2))
        i = self._split(t)
        times, use_h, use_l = self.times, self.hbm, self.l2
        hbm_cap, l2_cap, eps = self.hbm_cap, self.l2_cap, self._eps
        n = len(times)
        left = nbytes
        while True:
            rate = l2_cap - use_l[i]
            if hbm and hbm_cap - use_h[i] < rate:
                rate = hbm_cap - use_h[i]
            if cap < rate:
                rate = cap
            if rate <= eps:              # full: wait for the next segment (the last one is always free)
                i += 1
                continue
            a = times[i]
            end = a + left / rate
            b = times[i + 1] if i + 1 < n else _NEVER
            if end < b:
                if end <= a:             # what is left is below float resolution
                    return a
                times.insert(i + 1, end)
                use_h.insert(i + 1, use_h[i])
                use_l.insert(i + 1, use_l[i])
                use_l[i] += rate
                if hbm:
                    use_h[i] += rate
                return end
            use_l[i] += rate
            if hbm:
                use_h[i] += rate
            left -= rate * (b - a)
            i += 1
            if left <= 1e-9 * nbytes:
                return b


def _sector_geometry(view, gm, base_shape: tuple[int, ...]) -> tuple[int, int, int, int, int]:
    """(sector bytes, sectors per L2 block row, first and end sector of a row the view touches,
    L2 blocks per tensor row). Rows start on a sector boundary."""
    bits = BITS[view.dtype]
    sector = gm.sector_bytes
    per_block = max(1, gm.l2_block_bytes // sector)
    s0 = view.offset[-1] * bits // 8 // sector
    s1 = ceil(ceil((view.offset[-1] + view.extent[-1]) * bits / 8) / sector)
    blocks_per_row = ceil(ceil(ceil(base_shape[-1] * bits / 8) / sector) / per_block)
    return sector, per_block, s0, s1, blocks_per_row


def _row_runs(offset: tuple[int, ...], extent: tuple[int, ...], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Contiguous runs of flattened row indices covered by the leading dimensions of a view."""
    if not shape:
        return [(0, 1)]
    last_off, last_ext = offset[-1], extent[-1]
    runs = []
    outer = [()]
    for o, e in zip(offset[:-1], extent[:-1]):
        outer = [t + (i,) for t in outer for i in range(o, o + e)]
    strides = [prod(shape[d + 1:]) for d in range(len(shape))]
    for idx in outer:
        start = sum(i * s for i, s in zip(idx, strides[:-1])) + last_off
        runs.append((start, start + last_ext))
    return runs


def l2_work(trace: Trace, machine: MachineSpec) -> int:
    """How many (L2 block, transfer) touches timing this trace takes: over the distinct GM
    copies, the blocks each one's view spans times how often it is issued. From the views'
    geometry alone, in time linear in the trace, before any block is built."""
    distinct, counts, _ = _distinct_ops(trace)
    return _l2_touches(distinct, counts, machine, {t.id: t.shape for t in trace.tensors})[0]


def _l2_touches(distinct: dict[int, Op], counts: Counter, machine: MachineSpec,
                tensor_shapes: dict[int, tuple[int, ...]]) -> tuple[int, tuple[int, int, Op | None]]:
    """(total touches, (blocks per transfer, issues, op) of the heaviest distinct GM copy)."""
    gm = machine.gm
    br, per_block, sector_bits = gm.l2_block_rows, max(1, gm.l2_block_bytes // gm.sector_bytes), 8 * gm.sector_bytes
    memo: dict[tuple, int] = {}
    total, worst, worst_touches = 0, (0, 0, None), 0
    for i, op in distinct.items():
        if op.kind != "copy":
            continue
        view = op.dst[0]
        if view.space != "GM":
            view = op.src[0]
            if view.space != "GM":
                continue
        shape = tensor_shapes[view.base]
        if len(shape) == 2:                   # one run of rows: cheaper than a memo lookup
            bits = BITS[view.dtype]
            r0, s0 = view.offset[0], view.offset[-1] * bits // sector_bits
            s1 = -(-(view.offset[-1] + view.extent[-1]) * bits // sector_bits)
            blocks = (((r0 + view.extent[0] - 1) // br - r0 // br + 1)
                      * ((s1 - 1) // per_block - s0 // per_block + 1))
        else:
            key = (view.base, view.offset, view.extent, view.dtype)
            blocks = memo.get(key)
            if blocks is None:
                blocks = memo[key] = _block_entries(view, shape, br, per_block, sector_bits)
        touches = blocks * counts[i]
        total += touches
        if touches > worst_touches:
            worst, worst_touches = (blocks, counts[i], op), touches
    return total, worst


def _block_entries(view, base_shape: tuple[int, ...], br: int, per_block: int, sector_bits: int) -> int:
    """The (row run, L2 block) entries _GmAccess builds for a view, counted without building them
    (an upper bound for views of more than 4,096 row runs at strides that are not whole blocks)."""
    bits = BITS[view.dtype]
    s0 = view.offset[-1] * bits // sector_bits                              # as in _sector_geometry
    s1 = -(-(view.offset[-1] + view.extent[-1]) * bits // sector_bits)
    col_blocks = (s1 - 1) // per_block - s0 // per_block + 1
    if len(base_shape) == 2:                                                # one run of rows
        r0 = view.offset[0]
        return ((r0 + view.extent[0] - 1) // br - r0 // br + 1) * col_blocks
    offset, extent, shape = view.offset[:-1], view.extent[:-1], base_shape[:-1]
    if not shape:
        return col_blocks
    rows = extent[-1]
    strides = [prod(shape[d + 1:]) for d in range(len(shape) - 1)]
    runs = prod(extent[:-1])

    def spans(start: int) -> int:
        return (start + rows - 1) // br - start // br + 1

    if all(s % br == 0 for s in strides):     # every run starts at the same row within a block
        first = sum(o * s for o, s in zip(offset[:-1], strides)) + offset[-1]
        return runs * spans(first) * col_blocks
    if runs <= 4096:
        return sum(spans(r0) for r0, _ in _row_runs(offset, extent, shape)) * col_blocks
    return runs * min(rows, -(-(rows - 1) // br) + 1) * col_blocks


def _distinct_ops(trace: Trace) -> tuple[dict[int, Op], Counter, int]:
    """(distinct ops by id, in first-issue order; how often each is issued; all ops issued).
    Decoded traces take them from their arrays (Trace.op_ids) instead of the per-op objects."""
    if trace.op_ids is None:
        flat = list(chain.from_iterable(trace.ops))
        ids = list(map(id, flat))
        return dict(zip(ids, flat)), Counter(ids), len(ids)
    issued = np.concatenate([np.asarray(x, np.int64) for x in trace.op_ids] or [np.zeros(0, np.int64)])
    per_entry = np.bincount(issued, minlength=len(trace.op_table))
    first = np.full(len(per_entry), len(issued), np.int64)    # each entry's first issue (np.unique sorts: 20x slower)
    np.minimum.at(first, issued, np.arange(len(issued)))
    used = np.flatnonzero(per_entry)
    per_entry = per_entry.tolist()
    distinct: dict[int, Op] = {}
    counts: Counter = Counter()
    for i in used[np.argsort(first[used], kind="stable")].tolist():
        op = trace.op_table[i]
        distinct[id(op)] = op
        counts[id(op)] += per_entry[i]
    return distinct, counts, len(issued)


def simulate_timing(trace: Trace, machine: MachineSpec, timeline_core: int | None = None,
                    record_transfers: bool = False) -> TimingResult:
    """Time a trace on the machine. `timeline_core` records that core's per-op intervals;
    `record_transfers` every GM transfer's interval and bytes (TimingResult.transfers)."""
    with paused_gc():
        return _simulate_timing(trace, machine, timeline_core, record_transfers)


def _simulate_timing(trace: Trace, machine: MachineSpec, timeline_core: int | None,
                     record_transfers: bool = False) -> TimingResult:
    pipes = list(machine.pipes)
    pipe_idx = {p: i for i, p in enumerate(pipes)}
    tensor_index = {t.id: i for i, t in enumerate(trace.tensors)}
    tensor_shapes = {t.id: t.shape for t in trace.tensors}
    active = [c for c, ops in enumerate(trace.ops) if ops]
    n_active = max(1, len(active))
    gm = machine.gm
    issue = machine.issue_cycles
    s_pipe = pipes.index("S")
    l2_capacity = gm.l2_bytes // (gm.l2_block_rows * gm.l2_block_bytes)
    l2: OrderedDict[int, int] = OrderedDict()   # block key -> bit mask of resident (row, sector)s
    sector_bytes = gm.sector_bytes
    stats = {"hit": 0.0, "miss": 0.0}

    # ---- compile each core's ops into tuples the loop can run fast; identical
    # ---- costs and GM footprints (cores sharing a panel) are computed once
    static_memo: dict[tuple, tuple] = {}
    gm_memo: dict[tuple, _GmAccess] = {}
    templates: dict[tuple, tuple[_GmAccess, tuple[int, int]]] = {}   # 2-D tile geometry -> (built, where)
    block_rows = gm.l2_block_rows

    def compile_op(op: Op) -> tuple:
        kind, dst, src = op.kind, op.dst, op.src
        reads = tuple([v.key for v in src])
        writes = tuple([v.key for v in dst])
        if kind == "barrier":
            return (-1, 0, 0, reads, writes, None)
        if kind == "copy" and (dst[0].space == "GM" or src[0].space == "GM"):
            g = dst[0] if dst[0].space == "GM" else src[0]
            sig = (src[0].space, dst[0].space, g.base, g.offset, g.extent)
            access = gm_memo.get(sig)
            if access is None:
                shape = tensor_shapes[g.base]
                if len(shape) != 2:
                    access = gm_memo[sig] = _GmAccess(op, machine, tensor_index, shape)
                else:   # a 2-D tile: the same blocks as a tile of its shape built before, moved
                    r0 = g.offset[0]
                    shape_sig = (src[0].space, dst[0].space, g.dtype, shape[-1], g.offset[-1], g.extent,
                                 r0 % block_rows)
                    template = templates.get(shape_sig)
                    where = (tensor_index[g.base], r0 // block_rows)
                    if template is None:
                        access = _GmAccess(op, machine, tensor_index, shape)
                        templates[shape_sig] = (access, where)
                    else:
                        built, (tensor, row_block) = template
                        delta = ((where[0] - tensor) << 40) + (where[1] - row_block) * built.blocks_per_row
                        access = built.moved(delta, where[0])
                    gm_memo[sig] = access
            return (access.pipe_index, 0, 0, reads, writes, access)
        if kind == "copy":
            sig = (src[0].space, dst[0].space, dst[0].extent, dst[0].dtype)
        elif kind == "mma":
            sig = (kind, src[0].dtype, src[0].shape, dst[0].shape, op.params[1])
        else:
            sig = (kind, tuple([(x.extent, x.dtype) for x in dst + src]))
        cost = static_memo.get(sig)
        if cost is None:
            pipe, cycles, latency = static_cost(op, machine)
            cost = static_memo[sig] = (pipe_idx[pipe], cycles, latency)
        return (*cost, reads, writes, None)

    # identical ops are one shared object (see hwmodel.dsl): compile each once
    distinct, counts, n_ops = _distinct_ops(trace)
    work, (blocks, issues, heaviest) = _l2_touches(distinct, counts, machine, tensor_shapes)
    if work > MAX_L2_BLOCK_TOUCHES:
        raise BudgetError(
            f"timing this trace takes {work:,} L2 block touches, more than the simulator's budget of "
            f"{MAX_L2_BLOCK_TOUCHES:,}; the heaviest transfer, {heaviest.src[0].describe()} -> "
            f"{heaviest.dst[0].describe()}, spans {blocks:,} L2 blocks and is issued {issues:,} times. An L2 block "
            f"is {gm.l2_block_rows} rows x {gm.l2_block_bytes} B of a tensor: move data in fewer, larger transfers "
            "of contiguous rows (whole tiles), not thin slices that span many blocks")
    compiled = {i: compile_op(op) for i, op in distinct.items()}
    op_counts: Counter = Counter()
    bytes_by_path: Counter = Counter()
    for i, n in counts.items():
        op = distinct[i]
        op_counts[op.kind] += n
        if op.kind == "copy":
            bytes_by_path[f"{op.src[0].space}->{op.dst[0].space}"] += n * op.dst[0].nbytes

    large = _HAVE_NUMBA and n_ops >= COMPILED_MIN_OPS and compiled_loop_loads()
    if large and timeline_core is None and not record_transfers and gm.l2_block_bytes // gm.sector_bytes <= 62:
        from hwmodel._timing_engine import run_trace
        pf, bz, fin, hit, miss = run_trace(trace, machine, compiled, pipe_idx, s_pipe, l2_capacity)
        pipe_free, busy, finish = ({c: x[c] for c in active} for x in (pf, bz, fin))
        stats, timeline, transfers = {"hit": hit, "miss": miss}, [], []
    else:
        programs = [list(map(compiled.__getitem__, map(id, ops))) for ops in trace.ops]
        bandwidth = _Bandwidth(machine.hbm_bytes_per_cycle, machine.l2_bytes_per_cycle, compiled=large)
        move = bandwidth.move
        n_pipes = len(pipes)
        pipe_free = {c: [0.0] * n_pipes for c in active}
        busy = {c: [0.0] * n_pipes for c in active}
        s_clock = {c: 0.0 for c in active}
        write_done = {c: {} for c in active}
        read_done = {c: {} for c in active}
        position = {c: 0 for c in active}
        finish = {c: 0.0 for c in active}
        timeline: list[tuple[int, str, float, float]] = []
        transfers: list[tuple[int, str, float, float, int, int]] = []

        def gm_bytes(access: _GmAccess) -> tuple[int, int, int]:
            """(L2 hit bytes, HBM bytes, latency) of one transfer; L2 residency is tracked per block, row and sector."""
            hit_sectors = 0
            for key, cells in access.blocks:
                resident = l2.pop(key, 0)
                l2[key] = resident | cells
                hit_sectors += (resident & cells).bit_count()
            while len(l2) > l2_capacity:
                l2.popitem(last=False)
            hit = hit_sectors * sector_bytes
            miss = access.charged_bytes - hit
            if access.is_write:   # write-allocate in L2; the data still goes to HBM
                stats["miss"] += access.charged_bytes
                return 0, access.charged_bytes, 0
            stats["hit"] += hit
            stats["miss"] += miss
            return hit, miss, gm.hbm_latency_cycles if miss else gm.l2_latency_cycles

        def run_core(c: int) -> str:
            """Run core c until its next GM transfer (run that one first) or barrier or the end."""
            prog = programs[c]
            n = len(prog)
            pf, bz, wd, rd = pipe_free[c], busy[c], write_done[c], read_done[c]
            s = s_clock[c]
            i = position[c]
            done = finish[c]
            record = c == timeline_core
            first = True
            state = "done"
            while i < n:
                p, cycles, latency, reads, writes, access = prog[i]
                if p < 0:
                    state = "barrier"
                    break
                if access is not None:
                    if not first:
                        state = "gm"
                        break
                    hit, miss, latency = gm_bytes(access)
                first = False
                s += issue
                bz[s_pipe] += issue
                start = s if s > pf[p] else pf[p]
                for k in reads:
                    t = wd.get(k, 0.0)
                    if t > start:
                        start = t
                for k in writes:
                    t = wd.get(k, 0.0)
                    if t > start:
                        start = t
                    t = rd.get(k, 0.0)
                    if t > start:
                        start = t
                if access is None:
                    end = start + cycles
                else:             # hits cross L2, then misses (and writes) cross HBM and L2, at what is left
                    end = move(move(start + access.setup, hit, access.hit_cap, False), miss, access.miss_cap, True)
                    cycles = end - start
                    if record_transfers:
                        transfers.append((c, pipes[p], start, end, miss, hit + miss))
                pf[p] = end
                bz[p] += cycles
                for k in reads:
                    if rd.get(k, 0.0) < end:
                        rd[k] = end
                ready = end + latency
                for k in writes:
                    wd[k] = ready
                if ready > done:
                    done = ready
                if record:
                    timeline.append((i, pipes[p], start, end))
                i += 1
            position[c], s_clock[c], finish[c] = i, s, done
            return state

        def next_start(c: int) -> float:
            p = programs[c][position[c]][0]
            return max(s_clock[c] + issue, pipe_free[c][p])

        heap = [(0.0, c) for c in active]
        parked: list[int] = []
        gm_pipes = sorted({pipe_idx[p.pipe] for p in machine.paths if "GM" in (p.src, p.dst)}) or [s_pipe]
        pops = 0
        while heap or parked:
            if not heap:  # every live core waits at the barrier
                t = max(max(finish[c], max(pipe_free[c]), s_clock[c]) for c in parked) + machine.barrier_cycles
                for c in parked:
                    pipe_free[c] = [t] * n_pipes
                    s_clock[c] = t
                    finish[c] = t
                    position[c] += 1
                    heap.append((t, c))
                heapq.heapify(heap)
                parked = []
                continue
            _, c = heapq.heappop(heap)
            pops += 1
            if pops % 256 == 0:              # no core starts a GM transfer before its issue clock and GM pipes allow
                bandwidth.forget_before(min(max(s_clock[x] + issue, min([pipe_free[x][p] for p in gm_pipes]))
                                            for x in chain((c,), (x for _, x in heap))))
            state = run_core(c)
            if state == "gm":
                heapq.heappush(heap, (next_start(c), c))
            elif state == "barrier":
                parked.append(c)

    total = max((max(finish[c], max(pipe_free[c])) for c in active), default=0.0)
    core_cycles = [max(finish[c], max(pipe_free[c])) if c in finish else 0.0 for c in range(len(trace.ops))]
    pipe_busy = {p: (sum(busy[c][i] for c in active) / (n_active * total) if total else 0.0)
                 for i, p in enumerate(pipes)}
    return TimingResult(
        cycles=total, time_ns=machine.ns(total), core_time_ns=tuple(machine.ns(x) for x in core_cycles),
        pipe_busy=pipe_busy, bytes_by_path=dict(bytes_by_path), op_counts=dict(op_counts),
        l2_hit_bytes=int(stats["hit"]), hbm_bytes=int(stats["miss"]), active_cores=len(active),
        timeline=tuple(timeline), transfers=tuple(transfers))

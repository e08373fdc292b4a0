"""The timing engine's event loop, L2 model and bandwidth profile compiled with numba, for large traces.

The same model as hwmodel.timing's Python loop, step for step: cores taken in (next start,
core) order, ops in program order, the same float operations in the same order, an LRU L2
with one bit per (row, sector) of a block. Its results equal the Python loop's bit for bit
(tests/test_timing.py runs both). `run_trace` lays hwmodel.timing's compiled ops out as arrays.
`move` is hwmodel.timing._Bandwidth.move on arrays (the Python loop uses it for large traces too).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from hwmodel.dsl import Trace
from hwmodel.spec import MachineSpec

_M1, _M2, _M4 = 0x5555555555555555, 0x3333333333333333, 0x0F0F0F0F0F0F0F0F
# One module for every compiled function: numba's cache (cache=True) is invalidated by edits to
# the file a function is in, not to functions it calls in other files.


@njit(cache=True)
def _insert(times, use_h, use_l, n, i, t):
    """Split segment i at t: a new segment i + 1 starts at t with segment i's usage."""
    for j in range(n, i + 1, -1):
        times[j] = times[j - 1]
        use_h[j] = use_h[j - 1]
        use_l[j] = use_l[j - 1]
    times[i + 1] = t
    use_h[i + 1] = use_h[i]
    use_l[i + 1] = use_l[i]


@njit(cache=True)
def move(times, use_h, use_l, count, t, nbytes, cap, hbm, hbm_cap, l2_cap, eps):
    """_Bandwidth.move on the first count[0] entries of the arrays (count[0] is updated).
    Returns -1.0 without changing anything when the arrays may lack room for two more segments."""
    n = count[0]
    if n + 2 > times.shape[0]:
        return -1.0
    lo, hi = 0, n                       # bisect_right(times, t) - 1
    while lo < hi:
        mid = (lo + hi) >> 1
        if t < times[mid]:
            hi = mid
        else:
            lo = mid + 1
    i = lo - 1
    if times[i] != t:
        _insert(times, use_h, use_l, n, i, t)
        n += 1
        i += 1
    left = nbytes
    while True:
        rate = l2_cap - use_l[i]
        if hbm and hbm_cap - use_h[i] < rate:
            rate = hbm_cap - use_h[i]
        if cap < rate:
            rate = cap
        if rate <= eps:
            i += 1
            continue
        a = times[i]
        end = a + left / rate
        b = times[i + 1] if i + 1 < n else np.inf
        if end < b:
            if end <= a:
                count[0] = n
                return a
            _insert(times, use_h, use_l, n, i, end)
            n += 1
            use_l[i] += rate
            if hbm:
                use_h[i] += rate
            count[0] = n
            return end
        use_l[i] += rate
        if hbm:
            use_h[i] += rate
        left -= rate * (b - a)
        i += 1
        if left <= 1e-9 * nbytes:
            count[0] = n
            return b



@njit(cache=True)
def _popcount(x):
    """Set bits of a non-negative int64 below 2**62."""
    x = x - ((x >> 1) & _M1)
    x = (x & _M2) + ((x >> 2) & _M2)
    x = (x + (x >> 4)) & _M4
    x += x >> 8
    x += x >> 16
    x += x >> 32
    return x & 0x7F


@njit(cache=True)
def _grow(times, use_h, use_l, n):
    size = 2 * times.shape[0]
    t2, h2, l2 = np.zeros(size), np.zeros(size), np.zeros(size)
    t2[:n] = times[:n]
    h2[:n] = use_h[:n]
    l2[:n] = use_l[:n]
    return t2, h2, l2


@njit(cache=True)
def run(prog_ptr, prog_ops, active, op_pipe, op_cycles, op_lat, op_acc, rd_ptr, rd_keys, wr_ptr, wr_keys, n_keys,
        acc_origin, acc_base, org_ptr, cell_local, cell_words, n_blocks, acc_charged, acc_write, acc_setup,
        acc_hit_cap, acc_miss_cap, n_pipes, s_pipe, gm_pipes, issue, barrier_cycles, l2_capacity, sector_bytes,
        hbm_latency, l2_latency, hbm_cap, l2_cap, eps):
    """Run every core to its end: (pipe_free, busy, s_clock, finish, L2 hit bytes, HBM bytes)."""
    n_cores = prog_ptr.shape[0] - 1
    pipe_free = np.zeros((n_cores, n_pipes))
    busy = np.zeros((n_cores, n_pipes))
    s_clock = np.zeros(n_cores)
    finish = np.zeros(n_cores)
    position = prog_ptr[:-1].copy()
    write_done = np.zeros((n_cores, n_keys))
    read_done = np.zeros((n_cores, n_keys))
    # L2: residency per block as a bit per (row, sector), whole rows per int64 word (the words of
    # hwmodel.timing's block masks); LRU order as a doubly linked list
    n_words = cell_words.shape[1]
    resident = np.zeros((n_blocks, n_words), np.int64)
    prev = np.full(n_blocks, -1, np.int64)
    nxt = np.full(n_blocks, -1, np.int64)
    in_l2 = np.zeros(n_blocks, np.bool_)
    head, tail, in_use = -1, -1, 0
    hit_total, miss_total = 0.0, 0.0
    # the bandwidth profile (hwmodel.timing._Bandwidth)
    times, use_h, use_l = np.zeros(4096), np.zeros(4096), np.zeros(4096)
    count = np.ones(1, np.int64)
    # the heap of (next start, core): at most one entry per core, popped in (time, core) order
    in_heap = np.zeros(n_cores, np.bool_)
    key = np.zeros(n_cores)
    parked = np.zeros(n_cores, np.bool_)
    n_heap, n_parked = 0, 0
    for c in active:
        in_heap[c] = True
        n_heap += 1
    pops = 0
    while n_heap > 0 or n_parked > 0:
        if n_heap == 0:                       # every live core waits at the barrier
            t = -np.inf
            for c in range(n_cores):
                if parked[c]:
                    v = finish[c]
                    for p in range(n_pipes):
                        if pipe_free[c, p] > v:
                            v = pipe_free[c, p]
                    if s_clock[c] > v:
                        v = s_clock[c]
                    if v > t:
                        t = v
            t = t + barrier_cycles
            for c in range(n_cores):
                if parked[c]:
                    pipe_free[c, :] = t
                    s_clock[c] = t
                    finish[c] = t
                    position[c] += 1
                    key[c] = t
                    in_heap[c] = True
                    parked[c] = False
            n_heap, n_parked = n_parked, 0
            continue
        c = -1
        for x in range(n_cores):
            if in_heap[x] and (c < 0 or key[x] < key[c]):
                c = x
        in_heap[c] = False
        n_heap -= 1
        pops += 1
        if pops % 256 == 0:                  # forget the profile before any core's next GM transfer
            bound = np.inf
            for x in range(n_cores):
                if x == c or in_heap[x]:
                    g = np.inf
                    for p in gm_pipes:
                        if pipe_free[x, p] < g:
                            g = pipe_free[x, p]
                    v = s_clock[x] + issue
                    if g > v:
                        v = g
                    if v < bound:
                        bound = v
            n = count[0]
            k = np.searchsorted(times[:n], bound, side="right") - 1
            if k > 64:
                times[:n - k] = times[k:n].copy()
                use_h[:n - k] = use_h[k:n].copy()
                use_l[:n - k] = use_l[k:n].copy()
                count[0] = n - k
        # ---- run core c until its next GM transfer (run that one first), a barrier or its end
        i = position[c]
        stop = prog_ptr[c + 1]
        s = s_clock[c]
        done = finish[c]
        first = True
        state = 0
        while i < stop:
            d = prog_ops[i]
            p = op_pipe[d]
            if p < 0:
                state = 2
                break
            a = op_acc[d]
            cycles = op_cycles[d]
            latency = op_lat[d]
            hit, miss = 0, 0
            if a >= 0:
                if not first:
                    state = 1
                    break
                hit_sectors = 0
                base, o = acc_base[a], acc_origin[a]
                for e in range(org_ptr[o], org_ptr[o + 1]):
                    b = base + cell_local[e]
                    if in_l2[b]:                 # take it out of the LRU order ...
                        if prev[b] >= 0:
                            nxt[prev[b]] = nxt[b]
                        else:
                            head = nxt[b]
                        if nxt[b] >= 0:
                            prev[nxt[b]] = prev[b]
                        else:
                            tail = prev[b]
                        in_use -= 1
                    for w in range(n_words):
                        cells = cell_words[e, w]
                        if cells != 0:
                            old = resident[b, w]
                            hit_sectors += _popcount(old & cells)
                            resident[b, w] = old | cells
                    prev[b] = tail                # ... and put it back as the most recent
                    nxt[b] = -1
                    if tail >= 0:
                        nxt[tail] = b
                    else:
                        head = b
                    tail = b
                    in_l2[b] = True
                    in_use += 1
                while in_use > l2_capacity:       # evict the least recent
                    h = head
                    head = nxt[h]
                    if head >= 0:
                        prev[head] = -1
                    else:
                        tail = -1
                    in_l2[h] = False
                    resident[h, :] = 0
                    in_use -= 1
                hit = hit_sectors * sector_bytes
                miss = acc_charged[a] - hit
                if acc_write[a]:                  # write-allocate in L2; the data still goes to HBM
                    miss_total += acc_charged[a]
                    hit, miss = 0, acc_charged[a]
                    latency = 0.0
                else:
                    hit_total += hit
                    miss_total += miss
                    latency = hbm_latency if miss else l2_latency
            first = False
            s += issue
            busy[c, s_pipe] += issue
            start = s if s > pipe_free[c, p] else pipe_free[c, p]
            for j in range(rd_ptr[d], rd_ptr[d + 1]):
                t = write_done[c, rd_keys[j]]
                if t > start:
                    start = t
            for j in range(wr_ptr[d], wr_ptr[d + 1]):
                t = write_done[c, wr_keys[j]]
                if t > start:
                    start = t
                t = read_done[c, wr_keys[j]]
                if t > start:
                    start = t
            if a < 0:
                end = start + cycles
            else:             # hits cross L2, then misses (and writes) cross HBM and L2, at what is left
                end = start + acc_setup[a]
                for leg in range(2):
                    nbytes = hit if leg == 0 else miss
                    if nbytes > 0:
                        cap = acc_hit_cap[a] if leg == 0 else acc_miss_cap[a]
                        got = move(times, use_h, use_l, count, end, float(nbytes), cap, leg == 1, hbm_cap, l2_cap, eps)
                        if got < 0.0:
                            times, use_h, use_l = _grow(times, use_h, use_l, count[0])
                            got = move(times, use_h, use_l, count, end, float(nbytes), cap, leg == 1, hbm_cap,
                                       l2_cap, eps)
                        end = got
                cycles = end - start
            pipe_free[c, p] = end
            busy[c, p] += cycles
            for j in range(rd_ptr[d], rd_ptr[d + 1]):
                if read_done[c, rd_keys[j]] < end:
                    read_done[c, rd_keys[j]] = end
            ready = end + latency
            for j in range(wr_ptr[d], wr_ptr[d + 1]):
                write_done[c, wr_keys[j]] = ready
            if ready > done:
                done = ready
            i += 1
        position[c] = i
        s_clock[c] = s
        finish[c] = done
        if state == 1:
            v = s + issue
            if pipe_free[c, op_pipe[prog_ops[i]]] > v:
                v = pipe_free[c, op_pipe[prog_ops[i]]]
            key[c] = v
            in_heap[c] = True
            n_heap += 1
        elif state == 2:
            parked[c] = True
            n_parked += 1
    return pipe_free, busy, s_clock, finish, hit_total, miss_total


def run_trace(trace: Trace, machine: MachineSpec, compiled: dict[int, tuple], pipe_idx: dict[str, int], s_pipe: int,
              l2_capacity: int) -> tuple:
    """Time a trace with the compiled loop, given hwmodel.timing's compiled distinct ops (op id ->
    (pipe, cycles, latency, reads, writes, _GmAccess or None)): (pipe_free, busy, finish per core
    as lists, L2 hit bytes, HBM bytes), as the Python loop gives them."""
    gm = machine.gm
    per_block = max(1, gm.l2_block_bytes // gm.sector_bytes)
    index = {i: d for d, i in enumerate(compiled)}
    n_ops = len(index)
    op_pipe, op_acc = np.full(n_ops, -1, np.int64), np.full(n_ops, -1, np.int64)
    op_cycles, op_lat = np.zeros(n_ops), np.zeros(n_ops)
    keys: dict[int, int] = {}           # hazard key -> dense id
    rd_ptr, rd_keys, wr_ptr, wr_keys = [0], [], [0], []
    accesses: dict[int, int] = {}       # id(_GmAccess) -> dense id
    acc_list: list = []                 # the distinct _GmAccess objects
    for d, (p, cycles, latency, reads, writes, access) in enumerate(compiled.values()):
        op_pipe[d], op_cycles[d], op_lat[d] = p, cycles, latency
        rd_keys += [keys.setdefault(k, len(keys)) for k in reads]
        wr_keys += [keys.setdefault(k, len(keys)) for k in writes]
        rd_ptr.append(len(rd_keys))
        wr_ptr.append(len(wr_keys))
        if access is not None:
            a = accesses.get(id(access))
            if a is None:
                a = accesses[id(access)] = len(acc_list)
                acc_list.append(access)
            op_acc[d] = a
    # L2 blocks get dense ids tensor by tensor: the blocks of tensor t are ids offset[t] + (key's
    # low 40 bits). A transfer touches its origin's blocks moved by `delta` (see _GmAccess.moved),
    # so the cells are listed once per origin and each transfer adds its own dense base.
    low = (1 << 40) - 1
    origins: dict[int, int] = {}        # id(origin _GmAccess) -> dense id
    org_ptr, cell_local, cell_words, org_top = [0], [], [], []
    word_bits = (62 // per_block) * per_block        # whole rows of a block per int64 word, below bit 62
    n_words = -(-gm.l2_block_rows * per_block // word_bits)
    word_mask = (1 << word_bits) - 1
    acc_origin, acc_shift, acc_tensor = [], [], []
    tensor_top: dict[int, int] = {}     # tensor -> 1 + the largest block index touched
    for access in acc_list:
        origin = access.origin
        o = origins.get(id(origin))
        if o is None:
            o = origins[id(origin)] = len(org_top)
            top = 0
            for key, mask in origin._blocks:   # a block's (row, sector) bits, cut into words of whole rows
                cell_local.append(key & low)
                cell_words.append([(mask >> (w * word_bits)) & word_mask for w in range(n_words)])
                top = max(top, (key & low) + 1)
            org_ptr.append(len(cell_local))
            org_top.append(top)
        shift = access.delta - ((access.tensor - origin.tensor) << 40)   # within the tensor's block indices
        acc_origin.append(o)
        acc_shift.append(shift)
        acc_tensor.append(access.tensor)
        tensor_top[access.tensor] = max(tensor_top.get(access.tensor, 0), org_top[o] + shift)
    offset, n_blocks = {}, 0
    for tensor in sorted(tensor_top):
        offset[tensor], n_blocks = n_blocks, n_blocks + tensor_top[tensor]
    acc_base = [offset[t] + shift for t, shift in zip(acc_tensor, acc_shift)]
    if trace.op_ids is not None:        # decoded traces: the per-core programs are arrays already
        to_dense = np.array([index.get(id(op), -1) for op in trace.op_table], np.int64)
        programs = [to_dense[np.asarray(ids, np.int64)] for ids in trace.op_ids]
    else:
        programs = [np.fromiter(map(index.__getitem__, map(id, ops)), np.int64, len(ops)) for ops in trace.ops]
    prog_ptr = np.zeros(len(programs) + 1, np.int64)
    prog_ptr[1:] = np.cumsum([len(x) for x in programs])
    gm_pipes = sorted({pipe_idx[p.pipe] for p in machine.paths if "GM" in (p.src, p.dst)}) or [s_pipe]
    as_int = (lambda x: np.asarray(x, np.int64))
    pf, bz, _, fin, hit, miss = run(
        prog_ptr, np.concatenate(programs) if programs else np.zeros(0, np.int64),
        as_int([c for c, ops in enumerate(trace.ops) if ops]), op_pipe, op_cycles, op_lat, op_acc,
        as_int(rd_ptr), as_int(rd_keys), as_int(wr_ptr), as_int(wr_keys), max(1, len(keys)),
        as_int(acc_origin), as_int(acc_base), as_int(org_ptr), as_int(cell_local),
        np.array(cell_words, np.int64).reshape(-1, n_words), max(1, n_blocks),
        as_int([a.charged_bytes for a in acc_list]), np.array([a.is_write for a in acc_list], bool),
        np.array([a.setup for a in acc_list], float), np.array([a.hit_cap for a in acc_list], float),
        np.array([a.miss_cap for a in acc_list], float), len(machine.pipes), s_pipe, as_int(gm_pipes),
        float(machine.issue_cycles), float(machine.barrier_cycles), l2_capacity, gm.sector_bytes,
        float(gm.hbm_latency_cycles), float(gm.l2_latency_cycles), float(machine.hbm_bytes_per_cycle),
        float(machine.l2_bytes_per_cycle), 1e-9 * max(machine.hbm_bytes_per_cycle, machine.l2_bytes_per_cycle))
    return pf.tolist(), bz.tolist(), fin.tolist(), hit, miss

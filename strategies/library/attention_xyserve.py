"""XY-Serve-style attention meta-kernel: one matmul-softmax-matmul pipeline whose tiles are
chosen for the machine at run time, with virtual padding for ragged sequence lengths.

`plan` reads the free bytes of L1/L0A/L0B/L0C/UB (k.capacity), the cube fractal
(k.fractal) and the core count, and picks the query tile BQ, the key/value tile BKV and
the L0 chunks that fit with every staging ring SLOTS deep, minimising a time model: the
busiest core's score elements times the work per element, the larger of the softmax's
vector work (the bottleneck on a coupled core) and the K/V reloads per query tile.
The pipeline is attention_flash's online softmax (S = Q Kᵀ on the cube while the vector
unit does the previous block's softmax; O·exp(m_old - m) + P V in fp32 in UB; O / l at
the end), as one stream of key blocks over all of a core's work items.
Virtual padding: tiles keep their static on-chip shapes and GM is never padded; at a
ragged edge only the valid rows are moved and the ops run on the valid sub-tile (the cube
still pays whole fractals). CAUSAL skips key blocks past the diagonal and masks the
diagonal ones with a triangle built once per core. attention_xyserve_causal.py is this
file with CAUSAL = True.
"""
import math

CAUSAL = False             # mask keys after the query position (the attention-causal task)
SLOTS = 2                  # ring depth of the staging buffers (1 = single buffered)
MAX_BQ = 256               # largest query tile considered
MAX_BKV = 512              # largest key/value tile considered
TILE_STEP = 16             # tile candidates are multiples of this and of the cube fractal
PASSES = 9                 # vector passes per score element (copy, max, sub, exp x4, sum, cast)
OP_OVERHEAD_BYTES = 4096   # one vector instruction's fixed cost, in bytes of streamed data
OPS_PER_BLOCK = 16         # vector instructions per key block
LOAD_WEIGHT = 2.3          # vector bytes/cycle over per-core GM (L2) load bytes/cycle
ALIGN_BYTES = 32           # on-chip row alignment assumed when sizing tiles
MASK_VALUE = -30000.0      # added to masked logits: exp underflows to exactly 0


def padded(rows, cols, elem_bytes, fractal_rows=1):
    """Bytes of one on-chip slot: rows padded to ALIGN_BYTES, L0 rows to whole fractals."""
    rows = -(-rows // fractal_rows) * fractal_rows
    return rows * (-(-cols * elem_bytes // ALIGN_BYTES) * ALIGN_BYTES)


def largest_step(limit, unit, cap):
    """The largest multiple of `unit` that is <= limit and <= cap (0 if none)."""
    return min(cap, limit) // unit * unit


def plan(k, B, H, S, D):
    """(BQ, BKV, D_STEP, KV_STEP): the tile with the least modelled time that fits.

    Time = work per score element x the score elements of the busiest core (work items come
    in whole tiles, so a tile that leaves cores idle costs time). The work is the larger of
    the vector's (PASSES passes of 4 B, the O update amortised over BKV keys, instruction
    overhead over the tile) and the K/V loads' (4·D bytes per query tile, x LOAD_WEIGHT)."""
    if not (k.has_path("L0C", "UB") and k.has_path("UB", "L1")):
        raise ValueError(f"{k.machine_name} has no L0C->UB or UB->L1 path: this meta-kernel hands S and P "
                         "between cube and vector on chip (a coupled core); split-core machines would need "
                         "them staged through GM workspaces")
    fm, fn, fk = k.fractal("fp16")
    free = {space: k.capacity(space) for space in ("L1", "L0A", "L0B", "L0C", "UB")}
    best = None
    for bq in range(math.lcm(fm, TILE_STEP), MAX_BQ + 1, math.lcm(fm, TILE_STEP)):
        rows_q = -(-bq // fm) * fm
        for bkv in range(math.lcm(fn, fk, TILE_STEP), MAX_BKV + 1, math.lcm(fn, fk, TILE_STEP)):
            rows_kv = -(-bkv // fn) * fn
            ub = (SLOTS * padded(bq, D, 2) + padded(bq, D, 2) + padded(bq, bkv, 4) + padded(bq, bkv, 2)
                  + 2 * padded(bq, D, 4) + 6 * padded(bq, 1, 4))
            l1 = SLOTS * (padded(bq, D, 2) + 2 * padded(bkv, D, 2) + padded(bq, bkv, 2))
            if CAUSAL:
                ub += padded(bq, bq, 4) + padded(bq, 16, 2)
                l1 += padded(bq, 48, 2)
            l0c = SLOTS * (padded(bq, bkv, 4, fm) + padded(bq, D, 4, fm))
            q_l0a = SLOTS * padded(bq, D, 2, fm)
            if ub > free["UB"] or l1 > free["L1"] or l0c > free["L0C"] or q_l0a >= free["L0A"]:
                continue
            # L0 chunks: half of L0B for K chunks, half for V chunks, L0A beside Q for P chunks
            d_step = largest_step(free["L0B"] // 2 // SLOTS // (2 * rows_kv), fk, D)
            kv_step = largest_step(min(free["L0B"] // 2 // SLOTS // padded(1, D, 2),
                                       (free["L0A"] - q_l0a) // SLOTS // (2 * rows_q)), fk, bkv)
            if d_step < fk or kv_step < fk:
                continue
            vector = 4 * PASSES + 8 * D / bkv + OP_OVERHEAD_BYTES * OPS_PER_BLOCK / (bq * bkv)
            work = max(vector, LOAD_WEIGHT * 4 * D / bq)       # K and V are reloaded per query tile
            if CAUSAL:
                busiest = max(B * H * S * (S + bq) / 2 / k.num_cores, bq * S)
            else:
                busiest = -(-(B * H * -(-S // bq)) // k.num_cores) * bq * S
            if best is None or work * busiest < best[0]:
                best = (work * busiest, bq, bkv, d_step, kv_step)
    if best is None:
        raise ValueError(f"no attention tile fits this machine for head dim {D} (free bytes {free}); "
                         "lower SLOTS or the head dim")
    return best[1:]


def balance(k, items, costs):
    """This core's items: longest first, each to the least-loaded core (round-robin when equal)."""
    if len(set(costs)) <= 1:
        return k.share(items)
    order = sorted(range(len(items)), key=lambda i: -costs[i])
    loads = [0] * k.num_cores
    assigned = [[] for _ in range(k.num_cores)]
    for i in order:
        c = loads.index(min(loads))
        loads[c] += costs[i]
        assigned[c].append(items[i])
    return assigned[k.core_id]


def key_blocks(q0, rows, seq, bkv):
    """(k0, n, delta) of the key blocks a query block sees; delta is set where the mask is needed."""
    end = min(seq, q0 + rows) if CAUSAL else seq
    blocks = []
    for k0 in range(0, end, bkv):
        n = min(bkv, end - k0)
        partial = CAUSAL and k0 + n - 1 > q0
        blocks.append((k0, n, q0 - k0 if partial else None))
    return blocks


def build_triangle(k, tri, iota_ub, iota_l1, a1, a2, b1, b2, acc, s_ub):
    """tri[r, c] = MASK_VALUE where c > r, else 0 (fp32, UB), built once per core.

    c - r comes from the cube as two rank-16 products, (1/16)·iotaᵀ = c and
    iota·(-1/16)ᵀ = -r (iota row r holds r, exact in fp16); a step LUT makes the mask.
    Built in column pieces as wide as the staging buffers allow."""
    rows, width = tri.shape[0], b1.shape[0]
    k.fill(iota_ub[0:1, :], 0.0)
    done = 1
    while done < rows:                                     # iota by doubling: rows n..2n-1 = rows 0..n-1 + n
        w = min(done, rows - done)
        k.adds(iota_ub[done:done + w, :], iota_ub[:w, :], float(done))
        done += w
    k.copy(iota_l1[:, 0:16], iota_ub)
    k.fill(iota_ub, 1.0 / 16)
    k.copy(iota_l1[:, 16:32], iota_ub)
    k.fill(iota_ub, -1.0 / 16)
    k.copy(iota_l1[:, 32:48], iota_ub)
    k.copy(a1, iota_l1[:, 16:32])                          # a1 = 1/16
    k.copy(a2, iota_l1[:, 0:16])                           # a2 row r = r
    for c0 in range(0, rows, width):
        w = min(width, rows - c0)
        k.copy(b1[:w, :], iota_l1[c0:c0 + w, 0:16])        # b1 row c = c
        k.copy(b2[:w, :], iota_l1[c0:c0 + w, 32:48])       # b2 = -1/16
        k.mma(acc[:, :w], a1, b1[:w, :], transpose_b=True)
        k.mma(acc[:, :w], a2, b2[:w, :], accumulate=True, transpose_b=True)
        k.copy(s_ub[:, :w], acc[:, :w])
        k.lut(tri[:, c0:c0 + w], s_ub[:, :w], [0.5], [0.0, 0.0], [0.0, MASK_VALUE])


def mask(k, s, delta, tri):
    """Add the causal mask to a block of scores s (rows x cols) whose key offset is q0 - delta."""
    rows, cols = s.shape
    if delta >= 0:       # keys before delta are visible to every row; the rest is the triangle
        k.add(s[:, delta:cols], s[:, delta:cols], tri[:rows, :cols - delta])
    else:                # rows before -delta see none of these keys
        k.fill(s[:-delta, :], MASK_VALUE)
        k.add(s[-delta:rows, :], s[-delta:rows, :], tri[:rows + delta, :cols])


def kernel(k, q, key, v, o):
    B, H, S, D = q.shape
    BQ, BKV, D_STEP, KV_STEP = plan(k, B, H, S, D)
    scale = 1.0 / math.sqrt(D)
    # ---- buffers: staging rings of SLOTS; o/m/l/alpha hold the previous and current block
    q_ub, q_l1 = k.ring("UB", (BQ, D), "fp16", "q_ub", SLOTS), k.ring("L1", (BQ, D), "fp16", "q_l1", SLOTS)
    k_l1, v_l1 = k.ring("L1", (BKV, D), "fp16", "k_l1", SLOTS), k.ring("L1", (BKV, D), "fp16", "v_l1", SLOTS)
    p_l1 = k.ring("L1", (BQ, BKV), "fp16", "p_l1", SLOTS)
    q_l0 = k.ring("L0A", (BQ, D), "fp16", "q_l0a", SLOTS)
    p_l0 = k.ring("L0A", (BQ, KV_STEP), "fp16", "p_l0a", SLOTS)
    k_l0 = k.ring("L0B", (BKV, D_STEP), "fp16", "k_l0b", SLOTS)
    v_l0 = k.ring("L0B", (KV_STEP, D), "fp16", "v_l0b", SLOTS)
    s_acc = k.ring("L0C", (BQ, BKV), "fp32", "s_l0c", SLOTS)
    pv_acc = k.ring("L0C", (BQ, D), "fp32", "pv_l0c", SLOTS)
    out_ub = k.alloc("UB", (BQ, D), "fp16", name="out_ub")       # O in fp16, to GM
    s_ub = k.alloc("UB", (BQ, BKV), "fp32", name="s_ub")         # S, then P in fp32
    p_ub = k.alloc("UB", (BQ, BKV), "fp16", name="p_ub")
    o_ub = k.ring("UB", (BQ, D), "fp32", "o_ub", 2)
    m_ub = k.ring("UB", (BQ, 1), "fp32", "m_ub", 2)             # running row max
    l_ub = k.ring("UB", (BQ, 1), "fp32", "l_ub", 2)             # running row sum
    alpha_ub = k.ring("UB", (BQ, 1), "fp32", "alpha_ub", 2)     # exp(m_old - m_new)

    items = [(b, h, q0) for b in range(B) for h in range(H) for q0 in range(0, S, BQ)]
    costs = [sum(n for _, n, _ in key_blocks(q0, min(BQ, S - q0), S, BKV)) + BKV for (_, _, q0) in items]
    mine = balance(k, items, costs)
    # one stream of (item, block index, block) steps over all of this core's items, so the
    # pipeline runs on across item boundaries; rings are indexed by the step number t
    steps = [(i, j, blk) for i, (_, _, q0) in enumerate(mine)
             for j, blk in enumerate(key_blocks(q0, min(BQ, S - q0), S, BKV))]
    if not steps:        # no work here: issue nothing
        return
    if CAUSAL:
        tri = k.alloc("UB", (BQ, BQ), "fp32", name="tri_ub")
        width = min(BQ, BKV, KV_STEP)
        build_triangle(k, tri, k.alloc("UB", (BQ, 16), "fp16", name="iota_ub"),
                       k.alloc("L1", (BQ, 48), "fp16", name="iota_l1"), q_l0[0][:, 0:16], p_l0[0][:, 0:16],
                       k_l0[0][:width, 0:16], v_l0[0][:width, 0:16], s_acc[0][:, :width], s_ub[:, :width])
    d_chunks, v_chunks = -(-D // D_STEP), -(-BKV // KV_STEP)

    def scores(t):
        """Stage A: (Q of a new item,) K_t and V_t to L1; S_t = Q K_tᵀ on the cube."""
        i, j, (k0, n, _) = steps[t]
        b, h, q0 = mine[i]
        m, x, xq = min(BQ, S - q0), t % SLOTS, i % SLOTS
        if j == 0:       # Q, pre-scaled by 1/sqrt(d) in fp16
            k.copy(q_ub[xq][:m, :], q[b, h, q0:q0 + m, :])
            k.muls(q_ub[xq][:m, :], q_ub[xq][:m, :], scale)
            k.copy(q_l1[xq][:m, :], q_ub[xq][:m, :])
            k.copy(q_l0[xq][:m, :], q_l1[xq][:m, :])
        k.copy(k_l1[x][:n, :], key[b, h, k0:k0 + n, :])
        k.copy(v_l1[x][:n, :], v[b, h, k0:k0 + n, :])
        for c, d0 in enumerate(range(0, D, D_STEP)):
            dn, y = min(D_STEP, D - d0), (t * d_chunks + c) % SLOTS
            k.copy(k_l0[y][:n, :dn], k_l1[x][:n, d0:d0 + dn])
            k.mma(s_acc[x][:m, :n], q_l0[xq][:m, d0:d0 + dn], k_l0[y][:n, :dn], accumulate=d0 > 0,
                  transpose_b=True)

    def softmax(t):
        """Stage B: m_t = max(m_t-1, rowmax S_t); P_t = exp(S_t - m_t); l_t = l_t-1·alpha_t + rowsum P_t."""
        i, j, (_, n, delta) = steps[t]
        m, x, cur, prev = min(BQ, S - mine[i][2]), t % SLOTS, t % 2, (t - 1) % 2
        s = s_ub[:m, :n]
        k.copy(s, s_acc[x][:m, :n])
        if delta is not None:
            mask(k, s, delta, tri)
        mj = m_ub[cur][:m, :]
        k.reduce_max(mj, s)
        if j > 0:
            k.max(mj, mj, m_ub[prev][:m, :])
            k.sub(alpha_ub[cur][:m, :], m_ub[prev][:m, :], mj)
            k.exp(alpha_ub[cur][:m, :], alpha_ub[cur][:m, :])
        k.sub(s, s, mj)
        k.exp(s, s)
        k.reduce_sum(l_ub[cur][:m, :], s)
        if j > 0:
            k.mla(l_ub[cur][:m, :], l_ub[prev][:m, :], alpha_ub[cur][:m, :])
        k.cast(p_ub[:m, :n], s)
        k.copy(p_l1[x][:m, :n], p_ub[:m, :n])

    def values(t):
        """Stage C: P_t V_t on the cube, in key chunks of KV_STEP."""
        i, _, (_, n, _) = steps[t]
        m, x = min(BQ, S - mine[i][2]), t % SLOTS
        for c, c0 in enumerate(range(0, n, KV_STEP)):
            cn, y = min(KV_STEP, n - c0), (t * v_chunks + c) % SLOTS
            k.copy(p_l0[y][:m, :cn], p_l1[x][:m, c0:c0 + cn])
            k.copy(v_l0[y][:cn, :], v_l1[x][c0:c0 + cn, :])
            k.mma(pv_acc[x][:m, :], p_l0[y][:m, :cn], v_l0[y][:cn, :], accumulate=c0 > 0)

    def update(t):
        """Stage D: O_t = O_t-1·alpha_t + P_t V_t (fp32, UB); after an item's last block, O / l to GM."""
        i, j, _ = steps[t]
        b, h, q0 = mine[i]
        m = min(BQ, S - q0)
        acc = o_ub[t % 2][:m, :]
        k.copy(acc, pv_acc[t % SLOTS][:m, :])
        if j > 0:
            k.mla(acc, o_ub[(t - 1) % 2][:m, :], alpha_ub[t % 2][:m, :])
        if t + 1 == len(steps) or steps[t + 1][0] != i:
            k.div(acc, acc, l_ub[t % 2][:m, :])
            k.cast(out_ub[:m, :], acc)
            k.copy(o[b, h, q0:q0 + m, :], out_ub[:m, :])

    if SLOTS == 1:       # single buffered: each step finishes before the next one loads
        for t in range(len(steps)):
            scores(t)
            softmax(t)
            values(t)
            update(t)
        return
    # software pipeline: S of step t+1 is on the cube while the vector unit does the softmax
    # of step t; the O update of step t-1 trails the softmax of step t
    scores(0)
    for t in range(len(steps)):
        if t + 1 < len(steps):
            scores(t + 1)
        softmax(t)
        values(t)
        if t > 0:
            update(t - 1)
    update(len(steps) - 1)

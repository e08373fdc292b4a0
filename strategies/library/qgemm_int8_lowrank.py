"""INT8 GEMM with a low-rank FP16 part (LRQMM-style, randomized range finder on the device).

A ~= Y·Z with Y = A·Ω (Ω a K x RANK pseudo-random sketch, k.random) and Z = (YᵀY)⁻¹ Yᵀ A
(least squares: a Cholesky-QR projection without square roots, Gram matrix inverted by
Gauss-Jordan on the vector unit). The dominant part of A, outlier channels included, is
kept in fp16; only the remainder A - Y·Z is quantized, so its row scales shrink ~100x:
    C = deq(Q(A - Y·Z) Q(B)) + Y·(Z·B).
The split is exact whatever Y and Z are (both sides use the same fp16 Y and Z), so the
range finder's accuracy changes only how small the remainder is. Sketching the
quantization residual A - deq(Q(A)) instead barely helps (quantization noise is full
rank: 1.0-1.4x less error in numpy), which is why A itself is sketched.
Phases: 1 Ωᵀ, fp16 A and B, int8 B; 2 Y, Yᵀ and partial Gram matrices; 3 Gram inverse,
Z; 4 W = Z·B and the quantized remainder; 5 the INT8 GEMM plus Y·W per output tile.
"""
RANK = 24                  # sketch width r (the kept rank; the llm inputs have rank 16, so 24 oversamples)
SEED = 1234                # seed of the sketch Ω
BM, BN = 128, 128          # output tile (int32 and fp32 accumulators in L0C)
BK1, BK = 256, 64          # int8 K panel in L1, K step in L0
SLOTS = 2                  # ring depth of the staging buffers
GROUP = 1                  # tile-order swizzle: bands of GROUP tile-rows
DRAIN_ROWS = 16            # accumulator rows drained at a time
CAST_ROWS, CAST_COLS = 16, 128   # phase-1 vector chunk
BY, BKY = 64, 64           # phase 2: rows of A per block, K step of the sketch
STRIP = 128                # phases 3-4: columns of T/Z (over K) and of W (over N) per job
BMT = 64                   # phases 3-4: contraction step of T = YᵀA and W = Z·B
QROWS, QCOLS = 16, 128     # phase 4: chunk of the remainder quantized per pass
POOL_ROWS, POOL_COLS = 64, 128   # shared fp16 L0A/L0B rings (BY x BKY, RANK x BMT, BMT x STRIP, RANK x QCOLS fit)
QMAX = 127.0
TINY = 1e-30


def vector_phase(k, a, b, omega_t, a16, b16, qb, sb):
    """Ωᵀ (r x K) from k.random, fp16 copies of A and B, per-column int8 B with its scales."""
    K, N = b.shape
    rows = max(CAST_ROWS, RANK)                          # a chunk of A or B, or all of Ωᵀ's rows
    stage = k.ring("UB", (rows, CAST_COLS), "fp32", "stage", SLOTS)
    half = k.ring("UB", (rows, CAST_COLS), "fp16", "half", SLOTS)
    q_ub = k.ring("UB", (CAST_ROWS, CAST_COLS), "int8", "q", SLOTS)
    amax, part = k.alloc("UB", (1, CAST_COLS), "fp32", name="amax"), k.alloc("UB", (1, CAST_COLS), "fp32", name="part")
    jobs = [("omega", 0, c) for c in range(0, K, CAST_COLS)]
    jobs += [("a", r, c) for r in range(0, a.shape[0], CAST_ROWS) for c in range(0, K, CAST_COLS)]
    jobs += [("b", 0, c) for c in range(0, N, CAST_COLS)]
    step = 0
    for which, r, c in k.share(jobs):
        x = step % SLOTS
        step += 1
        if which == "omega":
            nc = min(CAST_COLS, K - c)
            k.random(stage[x][:RANK, :nc], SEED, origin=(0, c), tensor_shape=(RANK, K))
            k.muls(stage[x][:RANK, :nc], stage[x][:RANK, :nc], K ** -0.5)   # keeps Y near A's row scale
            k.cast(half[x][:RANK, :nc], stage[x][:RANK, :nc])
            k.copy(omega_t[:, c:c + nc], half[x][:RANK, :nc])
        elif which == "a":
            nr, nc = min(CAST_ROWS, a.shape[0] - r), min(CAST_COLS, K - c)
            k.copy(stage[x][:nr, :nc], a[r:r + nr, c:c + nc])
            k.cast(half[x][:nr, :nc], stage[x][:nr, :nc])
            k.copy(a16[r:r + nr, c:c + nc], half[x][:nr, :nc])
        else:   # a strip of B's columns: absmax pass, then quantize + fp16 pass
            nc = min(CAST_COLS, N - c)
            for n_chunk, rr in enumerate(range(0, K, CAST_ROWS)):
                nr = min(CAST_ROWS, K - rr)
                x = step % SLOTS
                step += 1
                k.copy(stage[x][:nr, :nc], b[rr:rr + nr, c:c + nc])
                k.abs(stage[x][:nr, :nc], stage[x][:nr, :nc])
                k.reduce_max(amax[:, :nc] if n_chunk == 0 else part[:, :nc], stage[x][:nr, :nc])
                if n_chunk:
                    k.max(amax[:, :nc], amax[:, :nc], part[:, :nc])
            k.maxs(amax[:, :nc], amax[:, :nc], TINY)
            k.muls(amax[:, :nc], amax[:, :nc], 1.0 / QMAX)
            k.copy(sb[:, c:c + nc], amax[:, :nc])
            for rr in range(0, K, CAST_ROWS):
                nr = min(CAST_ROWS, K - rr)
                x = step % SLOTS
                step += 1
                k.copy(stage[x][:nr, :nc], b[rr:rr + nr, c:c + nc])
                k.quantize(q_ub[x][:nr, :nc], stage[x][:nr, :nc], amax[:, :nc])
                k.copy(qb[rr:rr + nr, c:c + nc], q_ub[x][:nr, :nc])
                k.cast(half[x][:nr, :nc], stage[x][:nr, :nc])
                k.copy(b16[rr:rr + nr, c:c + nc], half[x][:nr, :nc])


def slots(buf):
    return [buf[x] for x in range(SLOTS)]


def l0_pools(k):
    """fp16 L0A/L0B rings shared by phases 2-4 (each slices what it needs): the phases run one
    after another, and static buffers of every phase would not fit in L0 side by side."""
    return (k.ring("L0A", (POOL_ROWS, POOL_COLS), "fp16", "pool_l0a", SLOTS),
            k.ring("L0B", (POOL_ROWS, POOL_COLS), "fp16", "pool_l0b", SLOTS))


def sketch_phase(k, a16, omega_t, y16, yt16, gram_parts, pools):
    """Y = A·Ω and Yᵀ = Ωᵀ·Aᵀ per block of BY rows, and this core's Gram matrix Σ YᵀY.
    The Ω operands in L0 are single buffers, reused for Yᵀ in the Gram product."""
    M, K = a16.shape
    a_l1, o_l1 = k.ring("L1", (BY, BKY), "fp16", "a_l1", SLOTS), k.ring("L1", (RANK, BKY), "fp16", "omega_l1", SLOTS)
    a_l0a, a_l0b = [v[:BY, :BKY] for v in slots(pools[0])], [v[:BY, :BKY] for v in slots(pools[1])]
    o_l0a, o_l0b = k.alloc("L0A", (RANK, BKY), "fp16", name="o_l0a"), k.alloc("L0B", (RANK, BKY), "fp16", name="o_l0b")
    acc_y, acc_yt = k.alloc("L0C", (BY, RANK), "fp32", name="acc_y"), k.alloc("L0C", (RANK, BY), "fp32", name="acc_yt")
    acc_g = k.alloc("L0C", (RANK, RANK), "fp32", name="acc_gram")
    y_ub, yt_ub = k.alloc("UB", (BY, RANK), "fp32", name="y_ub"), k.alloc("UB", (RANK, BY), "fp32", name="yt_ub")
    y_h, yt_h = k.alloc("UB", (BY, RANK), "fp16", name="y_h"), k.alloc("UB", (RANK, BY), "fp16", name="yt_h")
    yt_l1 = k.alloc("L1", (RANK, BY), "fp16", name="yt_l1")
    yt_l0a, yt_l0b = o_l0a[:, :BY], o_l0b[:, :BY]
    g_ub = k.alloc("UB", (RANK, RANK), "fp32", name="gram_ub")
    step = 0
    blocks = k.share(range(0, M, BY))
    for n_block, i in enumerate(blocks):
        m = min(BY, M - i)
        for kk in range(0, K, BKY):
            kl = min(BKY, K - kk)
            x = step % SLOTS
            step += 1
            k.copy(a_l1[x][:m, :kl], a16[i:i + m, kk:kk + kl])
            k.copy(o_l1[x][:, :kl], omega_t[:, kk:kk + kl])
            k.copy(a_l0a[x][:m, :kl], a_l1[x][:m, :kl])
            k.copy(a_l0b[x][:m, :kl], a_l1[x][:m, :kl])
            k.copy(o_l0a[:, :kl], o_l1[x][:, :kl])
            k.copy(o_l0b[:, :kl], o_l1[x][:, :kl])
            k.mma(acc_y[:m, :], a_l0a[x][:m, :kl], o_l0b[:, :kl], accumulate=kk > 0, transpose_b=True)
            k.mma(acc_yt[:, :m], o_l0a[:, :kl], a_l0b[x][:m, :kl], accumulate=kk > 0, transpose_b=True)
        k.copy(y_ub[:m, :], acc_y[:m, :])
        k.cast(y_h[:m, :], y_ub[:m, :])
        k.copy(y16[i:i + m, :], y_h[:m, :])
        k.copy(yt_ub[:, :m], acc_yt[:, :m])
        k.cast(yt_h[:, :m], yt_ub[:, :m])
        k.copy(yt16[:, i:i + m], yt_h[:, :m])
        k.copy(yt_l1[:, :m], yt_h[:, :m])
        k.copy(yt_l0a[:, :m], yt_l1[:, :m])
        k.copy(yt_l0b[:, :m], yt_l1[:, :m])
        k.mma(acc_g, yt_l0a[:, :m], yt_l0b[:, :m], accumulate=n_block > 0, transpose_b=True)
    if not blocks:
        k.fill(g_ub, 0.0)
    else:
        k.copy(g_ub, acc_g)
    r0 = k.core_id * RANK
    k.copy(gram_parts[r0:r0 + RANK, :], g_ub)


def gram_inverse(k, gram_parts, onehot, ginv):
    """Sum the cores' Gram matrices and invert by Gauss-Jordan (no pivoting: G is SPD);
    G⁻¹ goes to this core's rows of `ginv`. Unit vectors come from a GM row 0..0 1 0..0,
    read at shifted offsets (GM views need no alignment)."""
    r = RANK
    aug = k.alloc("UB", (r, 2 * r), "fp32", name="aug")
    unit = k.alloc("UB", (r, 2 * r), "fp32", name="unit")          # row p: e_p over 2r columns
    part = k.alloc("UB", (r, r), "fp32", name="gram_part")
    tmp = k.alloc("UB", (r, 2 * r), "fp32", name="tmp")
    col, piv = k.alloc("UB", (r, 1), "fp32", name="col"), k.alloc("UB", (1, 2 * r), "fp32", name="piv")
    row = k.core_id
    k.fill(tmp[0:1, :], 0.0)
    k.copy(onehot[row:row + 1, 0:2 * r], tmp[0:1, :])
    k.copy(onehot[row:row + 1, 2 * r:3 * r], tmp[0:1, :r])
    k.fill(piv[:, 0:r], 1.0)
    k.copy(onehot[row:row + 1, r:r + 1], piv[:, 0:1])
    for p in range(r):
        k.copy(unit[p:p + 1, :], onehot[row:row + 1, r - p:3 * r - p])
    for c in range(k.num_cores):
        k.copy(part, gram_parts[c * r:(c + 1) * r, :])
        if c == 0:
            k.muls(aug[:, :r], part, 1.0)
        else:
            k.add(aug[:, :r], aug[:, :r], part)
    k.muls(aug[:, r:], unit[:, :r], 1.0)                            # [G | I]
    for p in range(r):
        k.mul(tmp, aug, unit[p:p + 1, :])
        k.reduce_sum(col, tmp)                                      # column p of aug
        k.div(piv, aug[p:p + 1, :], col[p:p + 1, :])
        k.muls(col, col, -1.0)
        k.mla(aug, col, piv)                                        # eliminate column p everywhere
        k.muls(aug[p:p + 1, :], piv, 1.0)                           # ... and restore the pivot row
    k.copy(ginv[row * r:(row + 1) * r, :], aug[:, r:])


def thin_products(k, left, right, jobs, finish, pools):
    """For each job (column start j): acc (r x STRIP) = left (r x L) @ right[:, j:j+STRIP],
    contraction over L in steps of BMT; then finish(acc_ub, j, n) writes the result."""
    L = left.shape[1]
    l_l1, r_l1 = (k.ring("L1", (RANK, BMT), "fp16", "thin_l_l1", SLOTS),
                  k.ring("L1", (BMT, STRIP), "fp16", "thin_r_l1", SLOTS))
    l_l0, r_l0 = [v[:RANK, :BMT] for v in slots(pools[0])], [v[:BMT, :STRIP] for v in slots(pools[1])]
    acc = k.alloc("L0C", (RANK, STRIP), "fp32", name="thin_acc")
    acc_ub = k.alloc("UB", (RANK, STRIP), "fp32", name="thin_ub")
    step = 0
    for j in jobs:
        n = min(STRIP, right.shape[1] - j)
        for ll in range(0, L, BMT):
            nl = min(BMT, L - ll)
            x = step % SLOTS
            step += 1
            k.copy(l_l1[x][:, :nl], left[:, ll:ll + nl])
            k.copy(r_l1[x][:nl, :n], right[ll:ll + nl, j:j + n])
            k.copy(l_l0[x][:, :nl], l_l1[x][:, :nl])
            k.copy(r_l0[x][:nl, :n], r_l1[x][:nl, :n])
            k.mma(acc[:, :n], l_l0[x][:, :nl], r_l0[x][:nl, :n], accumulate=ll > 0)
        k.copy(acc_ub[:, :n], acc[:, :n])
        finish(acc_ub[:, :n], j, n)


def coefficients_phase(k, yt16, a16, ginv, z16, pools):
    """Z = G⁻¹ (Yᵀ A), STRIP columns (over K) per job: Yᵀ A on the cube, G⁻¹ as r rank-1 updates."""
    r = RANK
    gcol = k.ring("UB", (r, 1), "fp32", "ginv_col", r)
    z_ub, z_h = k.alloc("UB", (r, STRIP), "fp32", name="z_ub"), k.alloc("UB", (r, STRIP), "fp16", name="z_h")
    row = k.core_id * r
    for p in range(r):
        k.copy(gcol[p], ginv[row:row + r, p:p + 1])

    def finish(t_ub, j, n):
        k.fill(z_ub[:, :n], 0.0)
        for p in range(r):
            k.mla(z_ub[:, :n], gcol[p], t_ub[p:p + 1, :])
        k.cast(z_h[:, :n], z_ub[:, :n])
        k.copy(z16[:, j:j + n], z_h[:, :n])

    thin_products(k, yt16, a16, k.share(range(0, a16.shape[1], STRIP)), finish, pools)


def remainder_phase(k, a, y16, z16, b16, qa, sa, w16, pools):
    """W = Z·B (fp16 to GM), and per row strip of A: Q(A - Y·Z) with per-row absmax scales."""
    M, K = a.shape
    N = b16.shape[1]
    w_h = k.alloc("UB", (RANK, STRIP), "fp16", name="w_h")

    def finish(w_ub, j, n):
        k.cast(w_h[:, :n], w_ub)
        k.copy(w16[:, j:j + n], w_h[:, :n])

    jobs = [("w", j) for j in range(0, N, STRIP)] + [("a", i) for i in range(0, M, QROWS)]
    mine = k.share(jobs)
    thin_products(k, z16, b16, [j for which, j in mine if which == "w"], finish, pools)
    y_l0 = k.alloc("L0A", (QROWS, RANK), "fp16", name="y_rows")
    z_l0 = [v[:RANK, :QCOLS] for v in slots(pools[1])]
    acc = k.ring("L0C", (QROWS, QCOLS), "fp32", "yz_acc", SLOTS)
    yz, stage = k.ring("UB", (QROWS, QCOLS), "fp32", "yz", SLOTS), k.ring("UB", (QROWS, QCOLS), "fp32", "rem", SLOTS)
    q_ub = k.ring("UB", (QROWS, QCOLS), "int8", "q_rem", SLOTS)
    amax, part = k.alloc("UB", (QROWS, 1), "fp32", name="amax_rows"), k.alloc("UB", (QROWS, 1), "fp32", name="part_rows")
    step = 0
    for i in [i for which, i in mine if which == "a"]:
        m = min(QROWS, M - i)
        k.copy(y_l0[:m, :], y16[i:i + m, :])
        for quantizing in (False, True):
            for n_chunk, c in enumerate(range(0, K, QCOLS)):
                nc = min(QCOLS, K - c)
                x = step % SLOTS
                step += 1
                k.copy(z_l0[x][:, :nc], z16[:, c:c + nc])
                k.mma(acc[x][:m, :nc], y_l0[:m, :], z_l0[x][:, :nc])
                k.copy(yz[x][:m, :nc], acc[x][:m, :nc])
                k.copy(stage[x][:m, :nc], a[i:i + m, c:c + nc])
                k.sub(stage[x][:m, :nc], stage[x][:m, :nc], yz[x][:m, :nc])        # the remainder
                if quantizing:
                    k.quantize(q_ub[x][:m, :nc], stage[x][:m, :nc], amax[:m, :])
                    k.copy(qa[i:i + m, c:c + nc], q_ub[x][:m, :nc])
                    continue
                k.abs(stage[x][:m, :nc], stage[x][:m, :nc])
                k.reduce_max(amax[:m, :] if n_chunk == 0 else part[:m, :], stage[x][:m, :nc])
                if n_chunk:
                    k.max(amax[:m, :], amax[:m, :], part[:m, :])
            if not quantizing:
                k.maxs(amax[:m, :], amax[:m, :], TINY)
                k.muls(amax[:m, :], amax[:m, :], 1.0 / QMAX)
                k.copy(sa[i:i + m, :], amax[:m, :])


def output_phase(k, qa, qb, sa, sb, y16, w16, c):
    """Per output tile: int8 GEMM of the remainder, dequantized, plus Y·W on the fp16 cube."""
    M, K = qa.shape
    N = qb.shape[1]
    a_l1, b_l1 = k.ring("L1", (BM, BK1), "int8", "a_l1", SLOTS), k.ring("L1", (BK1, BN), "int8", "b_l1", SLOTS)
    a_l0, b_l0 = k.ring("L0A", (BM, BK), "int8", "a_l0a", SLOTS), k.ring("L0B", (BK, BN), "int8", "b_l0b", SLOTS)
    y_l0, w_l0 = k.alloc("L0A", (BM, RANK), "fp16", name="y_l0a"), k.alloc("L0B", (RANK, BN), "fp16", name="w_l0b")
    acc = k.alloc("L0C", (BM, BN), "int32", name="acc")
    acc_lr = k.alloc("L0C", (BM, BN), "fp32", name="acc_lowrank")
    acc_ub, lr_ub = (k.ring("UB", (DRAIN_ROWS, BN), "int32", "acc_ub", SLOTS),
                     k.ring("UB", (DRAIN_ROWS, BN), "fp32", "lr_ub", SLOTS))
    out_ub = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "out_ub", SLOTS)
    s_rows, s_cols = (k.ring("UB", (BM, 1), "fp32", "scale_rows", SLOTS),
                      k.ring("UB", (1, BN), "fp32", "scale_cols", SLOTS))
    s1 = s0 = so = st = 0
    for i, j in k.tiles((M, N), (BM, BN), group=GROUP):
        m, n = min(BM, M - i), min(BN, N - j)
        xs = st % SLOTS
        st += 1
        k.copy(s_rows[xs][:m, :], sa[i:i + m, :])
        k.copy(s_cols[xs][:, :n], sb[:, j:j + n])
        k.copy(y_l0[:m, :], y16[i:i + m, :])
        k.copy(w_l0[:, :n], w16[:, j:j + n])
        k.mma(acc_lr[:m, :n], y_l0[:m, :], w_l0[:, :n])
        for kk1 in range(0, K, BK1):
            kl1 = min(BK1, K - kk1)
            x1 = s1 % SLOTS
            s1 += 1
            k.copy(a_l1[x1][:m, :kl1], qa[i:i + m, kk1:kk1 + kl1])
            k.copy(b_l1[x1][:kl1, :n], qb[kk1:kk1 + kl1, j:j + n])
            for kk0 in range(0, kl1, BK):
                kl0 = min(BK, kl1 - kk0)
                x0 = s0 % SLOTS
                s0 += 1
                k.copy(a_l0[x0][:m, :kl0], a_l1[x1][:m, kk0:kk0 + kl0])
                k.copy(b_l0[x0][:kl0, :n], b_l1[x1][kk0:kk0 + kl0, :n])
                k.mma(acc[:m, :n], a_l0[x0][:m, :kl0], b_l0[x0][:kl0, :n], accumulate=kk1 + kk0 > 0)
        for r in range(0, m, DRAIN_ROWS):
            rows = min(DRAIN_ROWS, m - r)
            xo = so % SLOTS
            so += 1
            k.copy(acc_ub[xo][:rows, :n], acc[r:r + rows, :n])
            k.copy(lr_ub[xo][:rows, :n], acc_lr[r:r + rows, :n])
            k.dequantize(out_ub[xo][:rows, :n], acc_ub[xo][:rows, :n], s_rows[xs][r:r + rows, :], s_cols[xs][:, :n])
            k.add(out_ub[xo][:rows, :n], out_ub[xo][:rows, :n], lr_ub[xo][:rows, :n])
            k.copy(c[i + r:i + r + rows, j:j + n], out_ub[xo][:rows, :n])


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    r, cores = RANK, k.num_cores
    omega_t = k.workspace((r, K), "fp16", "omega_t")
    a16, b16 = k.workspace((M, K), "fp16", "a_fp16"), k.workspace((K, N), "fp16", "b_fp16")
    qa, qb = k.workspace((M, K), "int8", "rem_int8"), k.workspace((K, N), "int8", "b_int8")
    sa, sb = k.workspace((M, 1), "fp32", "rem_scale"), k.workspace((1, N), "fp32", "b_scale")
    y16, yt16 = k.workspace((M, r), "fp16", "y"), k.workspace((r, M), "fp16", "y_t")
    gram_parts, ginv = k.workspace((cores * r, r), "fp32", "gram_parts"), k.workspace((cores * r, r), "fp32", "gram_inv")
    onehot = k.workspace((cores, 3 * r), "fp32", "unit_row")
    z16, w16 = k.workspace((r, K), "fp16", "z"), k.workspace((r, N), "fp16", "w")
    vector_phase(k, a, b, omega_t, a16, b16, qb, sb)
    k.barrier()
    pools = l0_pools(k)
    sketch_phase(k, a16, omega_t, y16, yt16, gram_parts, pools)
    k.barrier()
    gram_inverse(k, gram_parts, onehot, ginv)
    coefficients_phase(k, yt16, a16, ginv, z16, pools)
    k.barrier()
    remainder_phase(k, a, y16, z16, b16, qa, sa, w16, pools)
    k.barrier()
    output_phase(k, qa, qb, sa, sb, y16, w16, c)

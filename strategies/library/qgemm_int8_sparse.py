"""INT8 GEMM with a sparse top-k FP16 part (LRQMM's sparse variant, channel-structured).

Outlier channels of A (columns whose absmax exceeds THRESH x the mean column absmax,
measured on the first DETECT_ROWS rows) are kept in fp16, at most TOPK of them, and
only the rest of A is quantized, so its row scales no longer follow the outliers:
    C = deq(Q(A ⊙ keep) Q(B)) + (A·P)(Pᵀ·B),   keep = 1 - Σ_t Pᵀ[t, :].
P (K x TOPK) is a 0/1 selection matrix built on the device: mask = compare(cmax, t, gt),
its inclusive prefix count c by a log-step scan (shifted re-reads of a GM row), and
Pᵀ[t, k] = mask[k]·(c[k] == t + 1) (compare eq): channel k goes to slot c[k] - 1, and
channels past TOPK stay in the quantized part. The split is exact whatever is selected,
so selection changes only the error; A·P and Pᵀ·B are thin fp16 cube products
(TOPK/K of a GEMM each). Phases: 1 column absmax of A; 2 threshold, scan, Pᵀ and keep;
3 Q(A ⊙ keep) with A·P, Q(B) with Pᵀ·B; 4 the INT8 GEMM plus (A·P)(Pᵀ·B) per tile.
"""
TOPK = 64                  # capacity: channels kept in fp16 (<= 64, the fp16 pool's rows)
THRESH = 5.0               # a channel is an outlier when its absmax > THRESH x the mean channel absmax
DETECT_ROWS = 256          # rows of A scanned for channel absmax (0: all rows)
BM, BN = 128, 128          # output tile (int32 and fp32 accumulators in L0C)
BK1, BK = 256, 64          # int8 K panel in L1, K step in L0
SLOTS = 2                  # ring depth of the staging buffers
GROUP = 1                  # tile-order swizzle: bands of GROUP tile-rows
DRAIN_ROWS = 16            # accumulator rows drained at a time
QROWS, QCOLS = 64, 128     # phases 1 and 3: chunk of A (rows x channels) per vector pass
QCOLS_B = 64               # phase 3: columns of B per job (chunks of QROWS rows)
SEL = 128                  # phase 2: channels per job (scan width)
PIECE = 2048               # phase 2: channels per pass when counting over all of K
QMAX = 127.0
TINY = 1e-30


def detect_phase(k, a, cmax, stage):
    """Column absmax of A's first DETECT_ROWS rows, QCOLS channels per job."""
    M, K = a.shape
    rows = min(M, DETECT_ROWS) if DETECT_ROWS else M
    amax, part = k.alloc("UB", (1, QCOLS), "fp32", name="cmax_ub"), k.alloc("UB", (1, QCOLS), "fp32", name="cmax_part")
    step = 0
    for c in k.share(range(0, K, QCOLS)):
        nc = min(QCOLS, K - c)
        for n_chunk, r in enumerate(range(0, rows, QROWS)):
            nr = min(QROWS, rows - r)
            x = step % SLOTS
            step += 1
            k.copy(stage[x][:nr, :nc], a[r:r + nr, c:c + nc])
            k.abs(stage[x][:nr, :nc], stage[x][:nr, :nc])
            k.reduce_max(amax[:, :nc] if n_chunk == 0 else part[:, :nc], stage[x][:nr, :nc])
            if n_chunk:
                k.max(amax[:, :nc], amax[:, :nc], part[:, :nc])
        k.copy(cmax[:, c:c + nc], amax[:, :nc])


def select_phase(k, cmax, scan, pt16, keep, stage, half):
    """Per job of SEL channels: the outlier mask, its prefix count, Pᵀ (fp16) and keep = 1 - selected."""
    K = cmax.shape[1]
    jobs = k.share(range(0, K, SEL))
    if not jobs:
        return
    piece, flags = k.alloc("UB", (1, PIECE), "fp32", name="cmax_piece"), k.alloc("UB", (1, PIECE), "fp32", name="flags")
    total, part, thresh = (k.alloc("UB", (1, 1), "fp32", name=n) for n in ("total", "part_sum", "thresh"))
    mask, count, shifted = (k.alloc("UB", (1, SEL), "fp32", name=n) for n in ("mask", "count", "shifted"))
    iota = k.alloc("UB", (TOPK, 1), "fp32", name="slot_number")
    for t in range(TOPK):
        k.fill(iota[t:t + 1, :], t + 1.0)
    for n_piece, p in enumerate(range(0, K, PIECE)):                 # threshold: THRESH x mean channel absmax
        n = min(PIECE, K - p)
        k.copy(piece[:, :n], cmax[:, p:p + n])
        k.reduce_sum(total if n_piece == 0 else part, piece[:, :n])
        if n_piece:
            k.add(total, total, part)
    k.muls(thresh, total, THRESH / K)
    row = scan[k.core_id:k.core_id + 1, :]                             # this core's scan row: SEL zeros, then x
    k.fill(shifted, 0.0)
    k.copy(row[:, :SEL], shifted)
    for s0 in jobs:
        w = min(SEL, K - s0)
        k.fill(total, 0.0)                                             # outliers before s0
        for p in range(0, s0, PIECE):
            n = min(PIECE, s0 - p)
            k.copy(piece[:, :n], cmax[:, p:p + n])
            k.compare(flags[:, :n], piece[:, :n], thresh, "gt")
            k.reduce_sum(part, flags[:, :n])
            k.add(total, total, part)
        k.copy(piece[:, :w], cmax[:, s0:s0 + w])
        k.compare(mask[:, :w], piece[:, :w], thresh, "gt")
        k.muls(count[:, :w], mask[:, :w], 1.0)
        s = 1
        while s < w:                                                   # inclusive scan: x[i] += x[i - s]
            k.copy(row[:, SEL:SEL + w], count[:, :w])
            k.copy(shifted[:, :w], row[:, SEL - s:SEL - s + w])
            k.add(count[:, :w], count[:, :w], shifted[:, :w])
            s *= 2
        k.add(count[:, :w], count[:, :w], total)                       # c[k]: outliers up to and including k
        sel = stage[0][:TOPK, :w]
        k.compare(sel, count[:, :w], iota, "eq")
        k.mul(sel, sel, mask[:, :w])                                   # Pᵀ[t, k] = mask[k] (c[k] == t + 1)
        k.cast(half[0][:TOPK, :w], sel)
        k.copy(pt16[:, s0:s0 + w], half[0][:TOPK, :w])
        k.reduce_sum(shifted[:, :w], sel)
        k.muls(shifted[:, :w], shifted[:, :w], -1.0)
        k.adds(shifted[:, :w], shifted[:, :w], 1.0)
        k.copy(keep[:, s0:s0 + w], shifted[:, :w])


def split_phase(k, a, b, pt16, keep, qa, sa, qb, sb, asel, bsel, ub, pools):
    """Jobs over QROWS-row strips of A (Q(A ⊙ keep), and A·P from fp16 A on the cube) and
    QCOLS_B-column strips of B (Q(B), and Pᵀ·B from fp16 B on the cube)."""
    M, K = a.shape
    N = b.shape[1]
    stage, half, q_ub = ub
    x_l1, p_l1 = (k.ring("L1", (QROWS, QCOLS), "fp16", "x_l1", SLOTS),
                  k.ring("L1", (QROWS, QCOLS), "fp16", "p_l1", SLOTS))
    l0a, l0b = pools
    acc = k.alloc("L0C", (QROWS, QCOLS_B), "fp32", name="acc_sel")
    sel_ub, sel_h = k.alloc("UB", (QROWS, QCOLS_B), "fp32", name="sel_ub"), k.alloc("UB", (QROWS, QCOLS_B), "fp16", name="sel_h")
    keep_ub = k.ring("UB", (1, QCOLS), "fp32", "keep_ub", SLOTS)
    amax, part = k.alloc("UB", (QROWS, 1), "fp32", name="amax_rows"), k.alloc("UB", (QROWS, 1), "fp32", name="part_rows")
    amax_b, part_b = k.alloc("UB", (1, QCOLS_B), "fp32", name="amax_cols"), k.alloc("UB", (1, QCOLS_B), "fp32", name="part_cols")
    jobs = [("a", i) for i in range(0, M, QROWS)] + [("b", j) for j in range(0, N, QCOLS_B)]
    step = 0
    for which, start in k.share(jobs):
        if which == "a":
            m = min(QROWS, M - start)
            for quantizing in (False, True):
                for n_chunk, c in enumerate(range(0, K, QCOLS)):
                    nc = min(QCOLS, K - c)
                    x = step % SLOTS
                    step += 1
                    xs = stage[x][:m, :nc]
                    k.copy(xs, a[start:start + m, c:c + nc])
                    k.copy(keep_ub[x][:, :nc], keep[:, c:c + nc])
                    if not quantizing:                                 # A·P: fp16 A against Pᵀ on the cube
                        k.cast(half[x][:m, :nc], xs)
                        k.copy(x_l1[x][:m, :nc], half[x][:m, :nc])
                        k.copy(p_l1[x][:TOPK, :nc], pt16[:, c:c + nc])
                        k.copy(l0a[x][:m, :nc], x_l1[x][:m, :nc])
                        k.copy(l0b[x][:TOPK, :nc], p_l1[x][:TOPK, :nc])
                        k.mma(acc[:m, :TOPK], l0a[x][:m, :nc], l0b[x][:TOPK, :nc], accumulate=c > 0, transpose_b=True)
                    k.mul(xs, xs, keep_ub[x][:, :nc])                  # the rest of A: outlier channels zeroed
                    if quantizing:
                        k.quantize(q_ub[x][:m, :nc], xs, amax[:m, :])
                        k.copy(qa[start:start + m, c:c + nc], q_ub[x][:m, :nc])
                        continue
                    k.abs(xs, xs)
                    k.reduce_max(amax[:m, :] if n_chunk == 0 else part[:m, :], xs)
                    if n_chunk:
                        k.max(amax[:m, :], amax[:m, :], part[:m, :])
                if not quantizing:
                    k.maxs(amax[:m, :], amax[:m, :], TINY)
                    k.muls(amax[:m, :], amax[:m, :], 1.0 / QMAX)
                    k.copy(sa[start:start + m, :], amax[:m, :])
                    k.copy(sel_ub[:m, :TOPK], acc[:m, :TOPK])
                    k.cast(sel_h[:m, :TOPK], sel_ub[:m, :TOPK])
                    k.copy(asel[start:start + m, :], sel_h[:m, :TOPK])
        else:
            n = min(QCOLS_B, N - start)
            for quantizing in (False, True):
                for n_chunk, r in enumerate(range(0, K, QROWS)):
                    kr = min(QROWS, K - r)
                    x = step % SLOTS
                    step += 1
                    xs = stage[x][:kr, :n]
                    k.copy(xs, b[r:r + kr, start:start + n])
                    if quantizing:                                     # Q(B), and Pᵀ·B on the cube
                        k.quantize(q_ub[x][:kr, :n], xs, amax_b[:, :n])
                        k.copy(qb[r:r + kr, start:start + n], q_ub[x][:kr, :n])
                        k.cast(half[x][:kr, :n], xs)
                        k.copy(x_l1[x][:kr, :n], half[x][:kr, :n])
                        k.copy(p_l1[x][:TOPK, :kr], pt16[:, r:r + kr])
                        k.copy(l0a[x][:TOPK, :kr], p_l1[x][:TOPK, :kr])
                        k.copy(l0b[x][:kr, :n], x_l1[x][:kr, :n])
                        k.mma(acc[:TOPK, :n], l0a[x][:TOPK, :kr], l0b[x][:kr, :n], accumulate=r > 0)
                        continue
                    k.abs(xs, xs)
                    k.reduce_max(amax_b[:, :n] if n_chunk == 0 else part_b[:, :n], xs)
                    if n_chunk:
                        k.max(amax_b[:, :n], amax_b[:, :n], part_b[:, :n])
                if not quantizing:
                    k.maxs(amax_b[:, :n], amax_b[:, :n], TINY)
                    k.muls(amax_b[:, :n], amax_b[:, :n], 1.0 / QMAX)
                    k.copy(sb[:, start:start + n], amax_b[:, :n])
            k.copy(sel_ub[:TOPK, :n], acc[:TOPK, :n])
            k.cast(sel_h[:TOPK, :n], sel_ub[:TOPK, :n])
            k.copy(bsel[:, start:start + n], sel_h[:TOPK, :n])


def output_phase(k, qa, qb, sa, sb, asel, bsel, c):
    """Per output tile: the INT8 GEMM of the rest, dequantized, plus (A·P)(Pᵀ·B) on the fp16 cube."""
    M, K = qa.shape
    N = qb.shape[1]
    a_l1, b_l1 = k.ring("L1", (BM, BK1), "int8", "a_l1", SLOTS), k.ring("L1", (BK1, BN), "int8", "b_l1", SLOTS)
    a_l0, b_l0 = k.ring("L0A", (BM, BK), "int8", "a_l0a", SLOTS), k.ring("L0B", (BK, BN), "int8", "b_l0b", SLOTS)
    s_l0, t_l0 = k.alloc("L0A", (BM, TOPK), "fp16", name="asel_l0a"), k.alloc("L0B", (TOPK, BN), "fp16", name="bsel_l0b")
    acc = k.alloc("L0C", (BM, BN), "int32", name="acc")
    acc_sp = k.alloc("L0C", (BM, BN), "fp32", name="acc_sparse")
    acc_ub, sp_ub = (k.ring("UB", (DRAIN_ROWS, BN), "int32", "acc_ub", SLOTS),
                     k.ring("UB", (DRAIN_ROWS, BN), "fp32", "sp_ub", SLOTS))
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
        k.copy(s_l0[:m, :], asel[i:i + m, :])
        k.copy(t_l0[:, :n], bsel[:, j:j + n])
        k.mma(acc_sp[:m, :n], s_l0[:m, :], t_l0[:, :n])
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
            k.copy(sp_ub[xo][:rows, :n], acc_sp[r:r + rows, :n])
            k.dequantize(out_ub[xo][:rows, :n], acc_ub[xo][:rows, :n], s_rows[xs][r:r + rows, :], s_cols[xs][:, :n])
            k.add(out_ub[xo][:rows, :n], out_ub[xo][:rows, :n], sp_ub[xo][:rows, :n])
            k.copy(c[i + r:i + r + rows, j:j + n], out_ub[xo][:rows, :n])


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    cmax, keep = k.workspace((1, K), "fp32", "channel_absmax"), k.workspace((1, K), "fp32", "keep")
    scan = k.workspace((k.num_cores, 2 * SEL), "fp32", "scan_rows")
    pt16 = k.workspace((TOPK, K), "fp16", "select_t")
    qa, qb = k.workspace((M, K), "int8", "rest_int8"), k.workspace((K, N), "int8", "b_int8")
    sa, sb = k.workspace((M, 1), "fp32", "rest_scale"), k.workspace((1, N), "fp32", "b_scale")
    asel, bsel = k.workspace((M, TOPK), "fp16", "a_selected"), k.workspace((TOPK, N), "fp16", "b_selected")
    ub = (k.ring("UB", (QROWS, QCOLS), "fp32", "stage", SLOTS), k.ring("UB", (QROWS, QCOLS), "fp16", "half", SLOTS),
          k.ring("UB", (QROWS, QCOLS), "int8", "q", SLOTS))
    detect_phase(k, a, cmax, ub[0])
    k.barrier()
    select_phase(k, cmax, scan, pt16, keep, ub[0], ub[1])
    k.barrier()
    pools = (k.ring("L0A", (QROWS, QCOLS), "fp16", "pool_l0a", SLOTS),
             k.ring("L0B", (QROWS, QCOLS), "fp16", "pool_l0b", SLOTS))
    split_phase(k, a, b, pt16, keep, qa, sa, qb, sb, asel, bsel, ub, pools)
    k.barrier()
    output_phase(k, qa, qb, sa, sb, asel, bsel, c)

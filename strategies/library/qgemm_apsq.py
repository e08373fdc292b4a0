"""APSQ-style INT8 GEMM: K split into passes whose partial sums are kept in low precision.

As INT8 direct (per-row/per-column absmax scales, INT8 cube), but the K axis runs in
passes of KPASS; between passes the running partial sum of each output tile is not kept
in int32/fp32 but requantized to PSUM_DTYPE (int16 or int8) with a per-row absmax scale,
as APSQ does to shrink partial-sum storage and traffic. The error this adds is counted
against the budget: it competes on qgemm-int8 (INT8-class accuracy), where int16 partial
sums cost almost nothing and int8 ones may not fit; on qgemm (2e-3) no INT8 recipe
without compensation passes (about 3e-2 on LLM-like inputs).
"""
BM, BN = 128, 128          # output tile (int32 accumulator of BM x BN in L0C)
BK1, BK = 256, 128         # K panel in L1, K step in L0
SLOTS = 2                  # ring depth of the staging buffers (1 = single buffered)
QROWS_A, QCOLS_A = 8, 128  # phase-1 chunk of A: QROWS_A rows share a pass, each row its scale
QROWS_B, QCOLS_B = 16, 64  # phase-1 chunk of B: a strip of QCOLS_B columns, each column its scale
QMAX = 127.0               # symmetric int8 range [-127, 127]
TINY = 1e-30               # all-zero rows/columns get a harmless nonzero scale
DRAIN_ROWS = 16            # accumulator rows dequantized at a time (a multiple of the L0C fractal rows)
GROUP = 1                  # tile-order swizzle: bands of GROUP tile-rows
KPASS = 1024               # K per pass: partial sums are requantized between passes
PSUM_DTYPE = "int16"       # storage of the running partial sum ("int16" or "int8")
PSUM_MAX = {"int16": 32767.0, "int8": 127.0}


def quantize_strip(k, src, dst, scale_gm, strip, chunks, stage, q_ub, amax, part, step):
    """Two passes over one strip of src: absmax per row/column -> scale, then quantize.

    `strip` is the (row, col) origin of the strip's scales, `chunks` its (r, c, rows, cols) pieces;
    amax / part are (r, 1) for per-row or (1, c) for per-column scales.
    """
    for n_chunk, (r, c, nr, nc) in enumerate(chunks):
        x = step % SLOTS
        step += 1
        k.copy(stage[x][:nr, :nc], src[r:r + nr, c:c + nc])
        k.abs(stage[x][:nr, :nc], stage[x][:nr, :nc])
        if n_chunk == 0:
            k.reduce_max(amax, stage[x][:nr, :nc])
        else:
            k.reduce_max(part, stage[x][:nr, :nc])
            k.max(amax, amax, part)
    k.maxs(amax, amax, TINY)
    k.muls(amax, amax, 1.0 / QMAX)                     # amax now holds the scale
    r0, c0 = strip
    k.copy(scale_gm[r0:r0 + amax.shape[0], c0:c0 + amax.shape[1]], amax)
    for r, c, nr, nc in chunks:
        x = step % SLOTS
        step += 1
        k.copy(stage[x][:nr, :nc], src[r:r + nr, c:c + nc])
        k.quantize(q_ub[x][:nr, :nc], stage[x][:nr, :nc], amax)
        k.copy(dst[r:r + nr, c:c + nc], q_ub[x][:nr, :nc])
    return step


def requantize(k, psum, scale, value, scratch):
    """psum = Q(value) in PSUM_DTYPE with a per-row absmax scale (the APSQ partial-sum store)."""
    k.abs(scratch, value)
    k.reduce_max(scale, scratch)
    k.maxs(scale, scale, TINY)
    k.muls(scale, scale, 1.0 / PSUM_MAX[PSUM_DTYPE])
    k.quantize(psum, value, scale)


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    # ---- phase 1: scales and int8 copies of A (per row) and B (per column) in GM
    qa, qb = k.workspace((M, K), "int8", "a_int8"), k.workspace((K, N), "int8", "b_int8")
    sa, sb = k.workspace((M, 1), "fp32", "a_scale"), k.workspace((1, N), "fp32", "b_scale")
    stage_a = k.ring("UB", (QROWS_A, QCOLS_A), "fp32", "stage_a", SLOTS)
    stage_b = k.ring("UB", (QROWS_B, QCOLS_B), "fp32", "stage_b", SLOTS)
    q_a = k.ring("UB", (QROWS_A, QCOLS_A), "int8", "q_a", SLOTS)
    q_b = k.ring("UB", (QROWS_B, QCOLS_B), "int8", "q_b", SLOTS)
    amax_a = k.alloc("UB", (QROWS_A, 1), "fp32", name="amax_a")
    part_a = k.alloc("UB", (QROWS_A, 1), "fp32", name="part_a")
    amax_b = k.alloc("UB", (1, QCOLS_B), "fp32", name="amax_b")
    part_b = k.alloc("UB", (1, QCOLS_B), "fp32", name="part_b")
    strips = [("a", r) for r in range(0, M, QROWS_A)] + [("b", cc) for cc in range(0, N, QCOLS_B)]
    step = 0
    for which, start in k.share(strips):
        if which == "a":
            nr = min(QROWS_A, M - start)
            chunks = [(start, cc, nr, min(QCOLS_A, K - cc)) for cc in range(0, K, QCOLS_A)]
            step = quantize_strip(k, a, qa, sa, (start, 0), chunks, stage_a, q_a,
                                  amax_a[:nr, :], part_a[:nr, :], step)
        else:
            nc = min(QCOLS_B, N - start)
            chunks = [(rr, start, min(QROWS_B, K - rr), nc) for rr in range(0, K, QROWS_B)]
            step = quantize_strip(k, b, qb, sb, (0, start), chunks, stage_b, q_b,
                                  amax_b[:, :nc], part_b[:, :nc], step)
    k.barrier()
    # ---- phase 2: int8 GEMM into int32, dequantized on the way out
    a_l1, b_l1 = k.ring("L1", (BM, BK1), "int8", "a_l1", SLOTS), k.ring("L1", (BK1, BN), "int8", "b_l1", SLOTS)
    a_l0, b_l0 = k.ring("L0A", (BM, BK), "int8", "a_l0a", SLOTS), k.ring("L0B", (BK, BN), "int8", "b_l0b", SLOTS)
    acc = k.alloc("L0C", (BM, BN), "int32", name="acc")
    acc_ub = k.ring("UB", (DRAIN_ROWS, BN), "int32", "acc_ub", SLOTS)
    out_ub = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "out_ub", SLOTS)
    s_rows = k.ring("UB", (BM, 1), "fp32", "scale_rows", SLOTS)
    s_cols = k.ring("UB", (1, BN), "fp32", "scale_cols", SLOTS)
    psum = k.alloc("UB", (BM, BN), PSUM_DTYPE, name="partial_sum")
    p_scale = k.alloc("UB", (BM, 1), "fp32", name="partial_scale")
    prev = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "prev_ub", SLOTS)
    ones = k.alloc("UB", (1, BN), "fp32", name="ones")
    k.fill(ones, 1.0)
    s1 = s0 = so = st = 0
    for i, j in k.tiles((M, N), (BM, BN), group=GROUP):
        m, n = min(BM, M - i), min(BN, N - j)
        xs = st % SLOTS
        st += 1
        k.copy(s_rows[xs][:m, :], sa[i:i + m, :])
        k.copy(s_cols[xs][:, :n], sb[:, j:j + n])
        passes = list(range(0, K, KPASS))
        for n_pass, kp in enumerate(passes):
            last = n_pass == len(passes) - 1
            end = min(K, kp + KPASS)
            for kk1 in range(kp, end, BK1):
                kl1 = min(BK1, end - kk1)
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
                    k.mma(acc[:m, :n], a_l0[x0][:m, :kl0], b_l0[x0][:kl0, :n], accumulate=kk1 + kk0 > kp)
            for r in range(0, m, DRAIN_ROWS):
                rows = min(DRAIN_ROWS, m - r)
                xo = so % SLOTS
                so += 1
                out = out_ub[xo][:rows, :n]
                k.copy(acc_ub[xo][:rows, :n], acc[r:r + rows, :n])
                k.dequantize(out, acc_ub[xo][:rows, :n], s_rows[xs][r:r + rows, :], s_cols[xs][:, :n])
                if n_pass:
                    k.dequantize(prev[xo][:rows, :n], psum[r:r + rows, :n], p_scale[r:r + rows, :], ones[:, :n])
                    k.add(out, out, prev[xo][:rows, :n])
                if last:
                    k.copy(c[i + r:i + r + rows, j:j + n], out)
                else:
                    requantize(k, psum[r:r + rows, :n], p_scale[r:r + rows, :], out, prev[xo][:rows, :n])

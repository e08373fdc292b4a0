"""SGEMM-cube: FP32-accurate GEMM on the FP16 cube by splitting (pre-split in GM, or on the fly).

Phase 1 (vector): every core splits a share of rows of A and B into hi = fp16(x) and
lo = fp16((x - hi) * 2**SHIFT), written to GM workspaces. With ON_THE_FLY there is no
phase 1 and no barrier: each K-panel is loaded as fp32 into UB, split there by the vector
unit and moved UB -> L1, overlapping the cube (cores sharing a panel each split it; the
GM traffic is the same bytes as hi + lo). Phase 2 (cube): per output
tile, main += a_hi @ b_hi and corr += a_hi @ b_lo + a_lo @ b_hi in two FP32
accumulators (lo @ lo dropped); the drain adds c = main + corr * 2**-SHIFT on the vector
unit. L1 holds K-panels of BK1, L0 steps of BK, rings of SLOTS (2 = double buffered).
"""
BM, BN = 128, 256          # output tile (two fp32 accumulators of BM x BN fill L0C)
BK1, BK = 256, 64          # K panel in L1, K step in L0
SLOTS = 2                  # ring depth of the staging buffers (1 = single buffered)
SHIFT = 11                 # lo is scaled by 2**SHIFT so it keeps its bits in fp16
SPLIT_ROWS, SPLIT_COLS = 32, 256   # phase-1 chunk of fp32 split at a time
DRAIN_ROWS = 16
GROUP = 2                  # block swizzle (as in CANN's basic matmul): bands of GROUP tile-rows
ON_THE_FLY = False         # split each K-panel in UB on its way to L1 instead of pre-splitting in GM
SPLIT_SLOTS = 2            # ring depth of the split staging in UB (hides GM latency of the chunk loads)


def split(k, src, hi, lo, stage, halves_hi, halves_lo, counter, spread=False):
    """Split src (fp32, GM) chunk by chunk in UB into hi/lo (fp16, in GM or L1); with
    `spread` this core does only its share of the chunks (phase 1 spreads them over the cores)."""
    rows, cols = src.shape
    chunks = [(r, c) for r in range(0, rows, SPLIT_ROWS) for c in range(0, cols, SPLIT_COLS)]
    for r, c in (k.share(chunks) if spread else chunks):
        nr, nc = min(SPLIT_ROWS, rows - r), min(SPLIT_COLS, cols - c)
        x = counter % SPLIT_SLOTS
        counter += 1
        k.copy(stage[x][:nr, :nc], src[r:r + nr, c:c + nc])
        k.split_fp16(halves_hi[x][:nr, :nc], halves_lo[x][:nr, :nc], stage[x][:nr, :nc], SHIFT)
        k.copy(hi[r:r + nr, c:c + nc], halves_hi[x][:nr, :nc])
        k.copy(lo[r:r + nr, c:c + nc], halves_lo[x][:nr, :nc])
    return counter


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    stage = k.ring("UB", (SPLIT_ROWS, SPLIT_COLS), "fp32", "stage", SPLIT_SLOTS)
    halves_hi = k.ring("UB", (SPLIT_ROWS, SPLIT_COLS), "fp16", "halves_hi", SPLIT_SLOTS)
    halves_lo = k.ring("UB", (SPLIT_ROWS, SPLIT_COLS), "fp16", "halves_lo", SPLIT_SLOTS)
    if not ON_THE_FLY:
        # ---- phase 1: split A and B into fp16 halves in GM
        a_hi, a_lo = k.workspace((M, K), "fp16", "a_hi"), k.workspace((M, K), "fp16", "a_lo")
        b_hi, b_lo = k.workspace((K, N), "fp16", "b_hi"), k.workspace((K, N), "fp16", "b_lo")
        n = split(k, a, a_hi, a_lo, stage, halves_hi, halves_lo, 0, spread=True)
        split(k, b, b_hi, b_lo, stage, halves_hi, halves_lo, n, spread=True)
        k.barrier()
    # ---- phase 2: three-term GEMM on the cube
    a_hi_l1 = k.ring("L1", (BM, BK1), "fp16", "a_hi_l1", SLOTS)
    a_lo_l1 = k.ring("L1", (BM, BK1), "fp16", "a_lo_l1", SLOTS)
    b_hi_l1 = k.ring("L1", (BK1, BN), "fp16", "b_hi_l1", SLOTS)
    b_lo_l1 = k.ring("L1", (BK1, BN), "fp16", "b_lo_l1", SLOTS)
    a_l0 = k.ring("L0A", (BM, 2 * BK), "fp16", "a_hilo_l0a", SLOTS)     # [hi | lo] side by side
    b_l0 = k.ring("L0B", (BK, BN), "fp16", "b_l0b", SLOTS)              # b_hi and b_lo take turns
    main = k.alloc("L0C", (BM, BN), "fp32", name="acc_main")
    corr = k.alloc("L0C", (BM, BN), "fp32", name="acc_corr")
    out = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "out_ub", SLOTS)
    corr_ub = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "corr_ub", SLOTS)
    s1 = s0 = sb = so = ss = 0
    for i, j in k.tiles((M, N), (BM, BN), group=GROUP):
        m, n = min(BM, M - i), min(BN, N - j)
        for kk1 in range(0, K, BK1):
            kl1 = min(BK1, K - kk1)
            x1 = s1 % SLOTS
            s1 += 1
            if ON_THE_FLY:
                ss = split(k, a[i:i + m, kk1:kk1 + kl1], a_hi_l1[x1][:m, :kl1], a_lo_l1[x1][:m, :kl1],
                           stage, halves_hi, halves_lo, ss)
                ss = split(k, b[kk1:kk1 + kl1, j:j + n], b_hi_l1[x1][:kl1, :n], b_lo_l1[x1][:kl1, :n],
                           stage, halves_hi, halves_lo, ss)
            else:
                k.copy(a_hi_l1[x1][:m, :kl1], a_hi[i:i + m, kk1:kk1 + kl1])
                k.copy(a_lo_l1[x1][:m, :kl1], a_lo[i:i + m, kk1:kk1 + kl1])
                k.copy(b_hi_l1[x1][:kl1, :n], b_hi[kk1:kk1 + kl1, j:j + n])
                k.copy(b_lo_l1[x1][:kl1, :n], b_lo[kk1:kk1 + kl1, j:j + n])
            for kk0 in range(0, kl1, BK):
                kl0 = min(BK, kl1 - kk0)
                first = kk1 + kk0 == 0
                x0 = s0 % SLOTS
                s0 += 1
                a_hi_l0, a_lo_l0 = a_l0[x0][:m, :kl0], a_l0[x0][:m, BK:BK + kl0]
                k.copy(a_hi_l0, a_hi_l1[x1][:m, kk0:kk0 + kl0])
                k.copy(a_lo_l0, a_lo_l1[x1][:m, kk0:kk0 + kl0])
                xb = sb % SLOTS
                k.copy(b_l0[xb][:kl0, :n], b_hi_l1[x1][kk0:kk0 + kl0, :n])
                k.mma(main[:m, :n], a_hi_l0, b_l0[xb][:kl0, :n], accumulate=not first)
                k.mma(corr[:m, :n], a_lo_l0, b_l0[xb][:kl0, :n], accumulate=not first)
                xb = (sb + 1) % SLOTS
                sb += 2
                k.copy(b_l0[xb][:kl0, :n], b_lo_l1[x1][kk0:kk0 + kl0, :n])
                k.mma(corr[:m, :n], a_hi_l0, b_l0[xb][:kl0, :n], accumulate=True)
        for r in range(0, m, DRAIN_ROWS):
            rows = min(DRAIN_ROWS, m - r)
            xo = so % SLOTS
            so += 1
            k.copy(out[xo][:rows, :n], main[r:r + rows, :n])
            k.copy(corr_ub[xo][:rows, :n], corr[r:r + rows, :n])
            k.axpy(out[xo][:rows, :n], corr_ub[xo][:rows, :n], 2.0 ** -SHIFT)
            k.copy(c[i + r:i + r + rows, j:j + n], out[xo][:rows, :n])

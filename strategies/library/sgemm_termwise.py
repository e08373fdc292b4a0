"""Termwise (Ootomo-style) split GEMM: FP32-accurate GEMM on the FP16 cube, K in chunks.

Phase 1 (vector): every core splits a share of A and B into hi = fp16(x) and
lo = fp16((x - hi) * 2**SHIFT) in GM workspaces. Phase 2: per output tile and per K chunk
of CHUNK columns, the cube computes main = hi·hi and corr = hi·lo + lo·hi into fresh L0C
accumulators; the vector unit moves them to UB and adds them into FP32 accumulators
(round to nearest), so the cube's truncating accumulation only spans one chunk. At the end
c = main + corr * 2**-SHIFT. CHUNK = 0 (or >= K) keeps the whole K on the cube (SGEMM-cube).
"""
BM, BN = 64, 64            # output tile: main + corr of BM x BN fp32 (x ACC_SLOTS) fill L0C
BK1, BK = 128, 64          # K panel in L1, K step in L0
CHUNK = 0                  # K columns per cube accumulation (0 or >= K: whole K)
SLOTS = 2                  # ring depth of the staging buffers (1 = single buffered)
ACC_SLOTS = 2              # L0C accumulator pairs: 2 lets the cube start a chunk while the last drains
SHIFT = 11                 # lo is scaled by 2**SHIFT so it keeps its bits in fp16
SPLIT_ROWS, SPLIT_COLS = 8, 128    # phase-1 chunk of fp32 split at a time
DRAIN_ROWS = 16            # accumulator rows moved L0C -> UB at a time
GROUP = 1                  # tile-order swizzle: bands of GROUP tile-rows


def split_share(k, src, hi, lo, stage, halves_hi, halves_lo, counter):
    """Split this core's share of chunks of src (fp32, GM) into hi/lo (fp16, GM)."""
    rows, cols = src.shape
    chunks = [(r, c) for r in range(0, rows, SPLIT_ROWS) for c in range(0, cols, SPLIT_COLS)]
    for r, c in k.share(chunks):
        nr, nc = min(SPLIT_ROWS, rows - r), min(SPLIT_COLS, cols - c)
        x = counter % SLOTS
        counter += 1
        k.copy(stage[x][:nr, :nc], src[r:r + nr, c:c + nc])
        k.split_fp16(halves_hi[x][:nr, :nc], halves_lo[x][:nr, :nc], stage[x][:nr, :nc], SHIFT)
        k.copy(hi[r:r + nr, c:c + nc], halves_hi[x][:nr, :nc])
        k.copy(lo[r:r + nr, c:c + nc], halves_lo[x][:nr, :nc])
    return counter


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    chunk = CHUNK if 0 < CHUNK < K else K
    chunked = chunk < K
    # ---- phase 1: split A and B into fp16 halves in GM
    a_hi, a_lo = k.workspace((M, K), "fp16", "a_hi"), k.workspace((M, K), "fp16", "a_lo")
    b_hi, b_lo = k.workspace((K, N), "fp16", "b_hi"), k.workspace((K, N), "fp16", "b_lo")
    stage = k.ring("UB", (SPLIT_ROWS, SPLIT_COLS), "fp32", "split_stage", SLOTS)
    halves_hi = k.ring("UB", (SPLIT_ROWS, SPLIT_COLS), "fp16", "split_hi", SLOTS)
    halves_lo = k.ring("UB", (SPLIT_ROWS, SPLIT_COLS), "fp16", "split_lo", SLOTS)
    n_split = split_share(k, a, a_hi, a_lo, stage, halves_hi, halves_lo, 0)
    split_share(k, b, b_hi, b_lo, stage, halves_hi, halves_lo, n_split)
    k.barrier()
    # ---- phase 2: per K chunk, three terms on the cube, chunk sums on the vector unit
    a_hi_l1 = k.ring("L1", (BM, BK1), "fp16", "a_hi_l1", SLOTS)
    a_lo_l1 = k.ring("L1", (BM, BK1), "fp16", "a_lo_l1", SLOTS)
    b_hi_l1 = k.ring("L1", (BK1, BN), "fp16", "b_hi_l1", SLOTS)
    b_lo_l1 = k.ring("L1", (BK1, BN), "fp16", "b_lo_l1", SLOTS)
    a_l0 = k.ring("L0A", (BM, 2 * BK), "fp16", "a_hilo_l0a", SLOTS)     # [hi | lo] side by side
    b_l0 = k.ring("L0B", (BK, BN), "fp16", "b_l0b", SLOTS)              # b_hi and b_lo take turns
    acc_slots = ACC_SLOTS if chunked else 1
    main = k.ring("L0C", (BM, BN), "fp32", "main_l0c", acc_slots)
    corr = k.ring("L0C", (BM, BN), "fp32", "corr_l0c", acc_slots)
    main_ub = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "main_ub", SLOTS)
    corr_ub = k.ring("UB", (DRAIN_ROWS, BN), "fp32", "corr_ub", SLOTS)
    if chunked:
        sum_main = k.alloc("UB", (BM, BN), "fp32", name="sum_main")   # FP32 sums over the chunks
        sum_corr = k.alloc("UB", (BM, BN), "fp32", name="sum_corr")
    s1 = s0 = sb = so = sa = 0
    for i, j in k.tiles((M, N), (BM, BN), group=GROUP):
        m, n = min(BM, M - i), min(BN, N - j)
        for q, kc in enumerate(range(0, K, chunk)):
            kend = min(K, kc + chunk)
            xa = sa % acc_slots
            sa += 1
            mn, cr = main[xa], corr[xa]
            for kk1 in range(kc, kend, BK1):
                kl1 = min(BK1, kend - kk1)
                x1 = s1 % SLOTS
                s1 += 1
                k.copy(a_hi_l1[x1][:m, :kl1], a_hi[i:i + m, kk1:kk1 + kl1])
                k.copy(a_lo_l1[x1][:m, :kl1], a_lo[i:i + m, kk1:kk1 + kl1])
                k.copy(b_hi_l1[x1][:kl1, :n], b_hi[kk1:kk1 + kl1, j:j + n])
                k.copy(b_lo_l1[x1][:kl1, :n], b_lo[kk1:kk1 + kl1, j:j + n])
                for kk0 in range(0, kl1, BK):
                    kl0 = min(BK, kl1 - kk0)
                    fresh = kk1 + kk0 == kc          # a new chunk starts a fresh accumulator
                    x0 = s0 % SLOTS
                    s0 += 1
                    a_hi_l0, a_lo_l0 = a_l0[x0][:m, :kl0], a_l0[x0][:m, BK:BK + kl0]
                    k.copy(a_hi_l0, a_hi_l1[x1][:m, kk0:kk0 + kl0])
                    k.copy(a_lo_l0, a_lo_l1[x1][:m, kk0:kk0 + kl0])
                    xb = sb % SLOTS
                    k.copy(b_l0[xb][:kl0, :n], b_hi_l1[x1][kk0:kk0 + kl0, :n])
                    k.mma(mn[:m, :n], a_hi_l0, b_l0[xb][:kl0, :n], accumulate=not fresh)
                    k.mma(cr[:m, :n], a_lo_l0, b_l0[xb][:kl0, :n], accumulate=not fresh)
                    xb = (sb + 1) % SLOTS
                    sb += 2
                    k.copy(b_l0[xb][:kl0, :n], b_lo_l1[x1][kk0:kk0 + kl0, :n])
                    k.mma(cr[:m, :n], a_hi_l0, b_l0[xb][:kl0, :n], accumulate=True)
            last = kend == K
            for r in range(0, m, DRAIN_ROWS):
                rows = min(DRAIN_ROWS, m - r)
                if not chunked:                      # whole K: c = main + corr * 2**-SHIFT
                    xo = so % SLOTS
                    so += 1
                    k.copy(main_ub[xo][:rows, :n], mn[r:r + rows, :n])
                    k.copy(corr_ub[xo][:rows, :n], cr[r:r + rows, :n])
                    k.axpy(main_ub[xo][:rows, :n], corr_ub[xo][:rows, :n], 2.0 ** -SHIFT)
                    k.copy(c[i + r:i + r + rows, j:j + n], main_ub[xo][:rows, :n])
                    continue
                sm, sc = sum_main[r:r + rows, :n], sum_corr[r:r + rows, :n]
                if q == 0:                           # first chunk: the sums start as the chunk
                    k.copy(sm, mn[r:r + rows, :n])
                    k.copy(sc, cr[r:r + rows, :n])
                else:
                    xo = so % SLOTS
                    so += 1
                    k.copy(main_ub[xo][:rows, :n], mn[r:r + rows, :n])
                    k.copy(corr_ub[xo][:rows, :n], cr[r:r + rows, :n])
                    k.add(sm, sm, main_ub[xo][:rows, :n])
                    k.add(sc, sc, corr_ub[xo][:rows, :n])
                if last:
                    k.axpy(sm, sc, 2.0 ** -SHIFT)
                    k.copy(c[i + r:i + r + rows, j:j + n], sm)

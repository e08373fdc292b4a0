"""Native FP16 GEMM on the cube: c[M,N] (fp32) = a[M,K] (fp16) @ b[K,N] (fp16).

L1 holds K-panels of BK1 columns, L0 steps of BK, both rings double buffered; the
accumulator drains through UB in row chunks. Ragged edges are handled by slicing.
"""
BM, BN = 256, 256          # output tile per core step (L0C holds BM x BN fp32)
BK1, BK = 128, 32          # K panel in L1, K step in L0
SLOTS = 2                  # ring depth of every staging buffer (1 = single buffered)
DRAIN_ROWS = 64            # rows of the accumulator moved to UB at a time
GROUP = 2                  # block swizzle (as in CANN's basic matmul): bands of GROUP tile-rows


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    a_l1, b_l1 = k.ring("L1", (BM, BK1), "fp16", "a_l1", SLOTS), k.ring("L1", (BK1, BN), "fp16", "b_l1", SLOTS)
    a_l0, b_l0 = k.ring("L0A", (BM, BK), "fp16", "a_l0a", SLOTS), k.ring("L0B", (BK, BN), "fp16", "b_l0b", SLOTS)
    acc = k.alloc("L0C", (BM, BN), "fp32", name="acc")
    direct = k.has_path("L0C", "GM")     # split-core chips drain through FixPipe
    out = None if direct else k.alloc("UB", (DRAIN_ROWS, BN), "fp32", count=SLOTS, name="out_ub")
    out = out if SLOTS > 1 or out is None else [out]
    s1 = s0 = so = 0
    for i, j in k.tiles((M, N), (BM, BN), group=GROUP):
        m, n = min(BM, M - i), min(BN, N - j)
        for kk1 in range(0, K, BK1):
            kl1 = min(BK1, K - kk1)
            x1 = s1 % SLOTS
            s1 += 1
            k.copy(a_l1[x1][:m, :kl1], a[i:i + m, kk1:kk1 + kl1])
            k.copy(b_l1[x1][:kl1, :n], b[kk1:kk1 + kl1, j:j + n])
            for kk0 in range(0, kl1, BK):
                kl0 = min(BK, kl1 - kk0)
                x0 = s0 % SLOTS
                s0 += 1
                k.copy(a_l0[x0][:m, :kl0], a_l1[x1][:m, kk0:kk0 + kl0])
                k.copy(b_l0[x0][:kl0, :n], b_l1[x1][kk0:kk0 + kl0, :n])
                k.mma(acc[:m, :n], a_l0[x0][:m, :kl0], b_l0[x0][:kl0, :n], accumulate=kk1 + kk0 > 0)
        if direct:
            k.copy(c[i:i + m, j:j + n], acc[:m, :n])
            continue
        for r in range(0, m, DRAIN_ROWS):
            rows = min(DRAIN_ROWS, m - r)
            xo = so % SLOTS
            so += 1
            k.copy(out[xo][:rows, :n], acc[r:r + rows, :n])
            k.copy(c[i + r:i + r + rows, j:j + n], out[xo][:rows, :n])

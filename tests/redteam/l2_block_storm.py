# expect: hw_violation
# task: hgemm
# shape: 64x64x32768
# A correct GEMM that, at the benchmark shape, also issues 14,000 legal loads per core of a
# 16384x16 sliver of B: each touches 512 L2 blocks, 229M block touches in all. The timing
# engine's work grows with the blocks a transfer touches and had no bound (such traces held
# the trusted process for hours); now the trace's L2 work is counted before timing starts and
# a trace over hwmodel.limits.MAX_L2_BLOCK_TOUCHES is rejected at once (rule: trusted budget).
BM, BN, BK = 64, 64, 64
STORM = 14_000


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc, out = k.alloc("L0C", (BM, BN), "fp32"), k.alloc("UB", (BM, BN), "fp32")
    if K >= 32768:
        sliver = k.alloc("L1", (16384, 16), "fp16")
        for _ in range(STORM):
            k.copy(sliver, b[0:16384, 0:16])
    for i, j in k.tiles((M, N), (BM, BN)):
        m, n = min(BM, M - i), min(BN, N - j)
        for kk in range(0, K, BK):
            kl = min(BK, K - kk)
            k.copy(a1[:m, :kl], a[i:i + m, kk:kk + kl])
            k.copy(a0[:m, :kl], a1[:m, :kl])
            k.copy(b1[:kl, :n], b[kk:kk + kl, j:j + n])
            k.copy(b0[:kl, :n], b1[:kl, :n])
            k.mma(acc[:m, :n], a0[:m, :kl], b0[:kl, :n], accumulate=kk > 0)
        k.copy(out[:m, :n], acc[:m, :n])
        k.copy(c[i:i + m, j:j + n], out[:m, :n])

# expect: wrong
# Precision downgrade: computes the FP32 task in plain FP16 (one cube pass, no split).
BM, BN, BK = 64, 128, 64


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    a32, b32 = k.alloc("UB", (BM, BK), "fp32"), k.alloc("UB", (BK, BN), "fp32")
    a16, b16 = k.alloc("UB", (BM, BK), "fp16"), k.alloc("UB", (BK, BN), "fp16")
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc, out = k.alloc("L0C", (BM, BN), "fp32"), k.alloc("UB", (BM, BN), "fp32")
    for i, j in k.tiles((M, N), (BM, BN)):
        m, n = min(BM, M - i), min(BN, N - j)
        for kk in range(0, K, BK):
            kl = min(BK, K - kk)
            k.copy(a32[:m, :kl], a[i:i + m, kk:kk + kl])
            k.cast(a16[:m, :kl], a32[:m, :kl])
            k.copy(a1[:m, :kl], a16[:m, :kl])
            k.copy(a0[:m, :kl], a1[:m, :kl])
            k.copy(b32[:kl, :n], b[kk:kk + kl, j:j + n])
            k.cast(b16[:kl, :n], b32[:kl, :n])
            k.copy(b1[:kl, :n], b16[:kl, :n])
            k.copy(b0[:kl, :n], b1[:kl, :n])
            k.mma(acc[:m, :n], a0[:m, :kl], b0[:kl, :n], accumulate=kk > 0)
        k.copy(out[:m, :n], acc[:m, :n])
        k.copy(c[i:i + m, j:j + n], out[:m, :n])

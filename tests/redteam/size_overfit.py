# expect: wrong
# task: hgemm
# shape: 2048x2048x2048
# Correct on the small correctness shapes, but at large sizes it skips the second half of K
# (cheaper, and wrong): only sampled validation at the benchmark shape can catch it.
BM, BN, BK = 128, 128, 64


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    k_used = K if M <= 1024 else K // 2
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc, out = k.alloc("L0C", (BM, BN), "fp32"), k.alloc("UB", (BM, BN), "fp32")
    for i, j in k.tiles((M, N), (BM, BN)):
        m, n = min(BM, M - i), min(BN, N - j)
        for kk in range(0, k_used, BK):
            kl = min(BK, k_used - kk)
            k.copy(a1[:m, :kl], a[i:i + m, kk:kk + kl])
            k.copy(b1[:kl, :n], b[kk:kk + kl, j:j + n])
            k.copy(a0[:m, :kl], a1[:m, :kl])
            k.copy(b0[:kl, :n], b1[:kl, :n])
            k.mma(acc[:m, :n], a0[:m, :kl], b0[:kl, :n], accumulate=kk > 0)
        k.copy(out[:m, :n], acc[:m, :n])
        k.copy(c[i:i + m, j:j + n], out[:m, :n])

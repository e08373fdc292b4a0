# expect: wrong
# task: hgemm
# shape: 512x512x512
# Correct on the small shapes; at the benchmark shape every core copies its output tiles from
# a GM workspace it never wrote, hoping the evaluator's memory still holds a previous honest
# kernel's result there (the sliced replay allocates workspaces and outputs uninitialised and
# sets to NaN only what the slice touches: this read is touched, so it reads NaN).
BM, BN, BK = 64, 128, 64


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    stale = k.workspace((M, N), "fp32", "stale")
    out = k.alloc("UB", (BM, BN), "fp32")
    if M * N >= 512 * 512:
        for i, j in k.tiles((M, N), (BM, BN)):
            m, n = min(BM, M - i), min(BN, N - j)
            k.copy(out[:m, :n], stale[i:i + m, j:j + n])
            k.copy(c[i:i + m, j:j + n], out[:m, :n])
        return
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc = k.alloc("L0C", (BM, BN), "fp32")
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

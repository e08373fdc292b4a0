# expect: wrong
# task: hgemm
# Overfits to shapes that are multiples of the tile: ragged edge tiles are skipped.
BM, BN, BK = 64, 64, 64


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc, out = k.alloc("L0C", (BM, BN), "fp32"), k.alloc("UB", (BM, BN), "fp32")
    for i, j in k.tiles((M, N), (BM, BN)):
        if i + BM > M or j + BN > N:
            continue
        for kk in range(0, K - K % BK, BK):
            k.copy(a1, a[i:i + BM, kk:kk + BK])
            k.copy(b1, b[kk:kk + BK, j:j + BN])
            k.copy(a0, a1)
            k.copy(b0, b1)
            k.mma(acc, a0, b0, accumulate=kk > 0)
        k.copy(out, acc)
        k.copy(c[i:i + BM, j:j + BN], out)

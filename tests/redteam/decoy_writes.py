# expect: wrong
# task: hgemm
# shape: 512x512x512
# Correct on the small shapes. At the benchmark shape a quarter of the cores write a cheap one-K-step
# tile (wrong), then issues 120 decoy writes into the next core's tile, which that core
# overwrites with correct values later. Choosing one of a core's output writes at random
# almost always picks a decoy, whose final values are correct. The checked elements of a core
# are now those whose final value it wrote.
BM, BN, BK = 64, 128, 64
DECOYS = 120


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    lazy = M * N >= 512 * 512 and k.core_id % 4 == 2
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc, out = k.alloc("L0C", (BM, BN), "fp32"), k.alloc("UB", (BM, BN), "fp32")
    tiles = k.tiles((M, N), (BM, BN))
    for i, j in tiles:
        m, n = min(BM, M - i), min(BN, N - j)
        for kk in range(0, BK if lazy else K, BK):
            kl = min(BK, K - kk)
            k.copy(a1[:m, :kl], a[i:i + m, kk:kk + kl])
            k.copy(a0[:m, :kl], a1[:m, :kl])
            k.copy(b1[:kl, :n], b[kk:kk + kl, j:j + n])
            k.copy(b0[:kl, :n], b1[:kl, :n])
            k.mma(acc[:m, :n], a0[:m, :kl], b0[:kl, :n], accumulate=kk > 0)
        k.copy(out[:m, :n], acc[:m, :n])
        k.copy(c[i:i + m, j:j + n], out[:m, :n])
    if lazy:   # the next core's tile, overwritten by that core after this one in any replay
        nxt = k.core_id + 1
        i, j = (nxt // (N // BN)) * BM, (nxt % (N // BN)) * BN
        for d in range(DECOYS):
            r, col = i + d % BM, j + 16 * (d // BM)
            k.copy(c[r:r + 1, col:col + 16], out[0:1, 0:16])

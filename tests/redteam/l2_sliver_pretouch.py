# expect: ok
# task: hgemm
# shape: 512x512x512
# baseline: PRETOUCH = False
# Gaming the L2 model: before the GEMM, touch a 32-B sliver of every 256-B L2 block row of
# the A and B panels this core will load. Residency used to be kept per block row, so the
# slivers (paid as 32 B each) made whole rows resident and the later panel loads hit. The L2
# now marks resident exactly the sectors a transfer paid for: the kernel is correct (ok) but
# must neither be faster nor fetch fewer bytes from HBM than itself without the pre-touch
# (at 512^3 the old model fetched 1.18 MB with the pre-touch instead of 1.84 MB; now 2.10 MB either way).
BM, BN, BK = 64, 128, 64
PRETOUCH = True


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    a1, b1 = k.alloc("L1", (BM, BK), "fp16"), k.alloc("L1", (BK, BN), "fp16")
    a0, b0 = k.alloc("L0A", (BM, BK), "fp16"), k.alloc("L0B", (BK, BN), "fp16")
    acc, out = k.alloc("L0C", (BM, BN), "fp32"), k.alloc("UB", (BM, BN), "fp32")
    sliver_a, sliver_b = k.alloc("UB", (BM, 16), "fp16"), k.alloc("UB", (BK, 16), "fp16")
    tiles = k.tiles((M, N), (BM, BN))
    if PRETOUCH:
        for i, j in tiles:
            m, n = min(BM, M - i), min(BN, N - j)
            for kk in range(0, K, 128):
                k.copy(sliver_a[:m, :min(16, K - kk)], a[i:i + m, kk:kk + min(16, K - kk)])
            for kk in range(0, K, BK):
                kl = min(BK, K - kk)
                for cb in range(j, j + n, 128):
                    k.copy(sliver_b[:kl, :min(16, N - cb)], b[kk:kk + kl, cb:cb + min(16, N - cb)])
    for i, j in tiles:
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

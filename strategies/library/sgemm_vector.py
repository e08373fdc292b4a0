"""Naive FP32 GEMM on the vector unit: one rank-1 update per k (dst += a[:, k] * b[k, :]).

No cube, no splitting: exact FP32 arithmetic at vector-unit speed. It is the baseline
every cube strategy is measured against, and slow on purpose (column loads of A waste
GM sectors, every k is three ops).
"""
BM, BN = 128, 256          # output tile held in UB
SLOTS = 2


def kernel(k, a, b, c):
    M, K = a.shape
    N = b.shape[1]
    acc = k.alloc("UB", (BM, BN), "fp32", name="acc")
    a_col = k.alloc("UB", (BM, 1), "fp32", count=SLOTS, name="a_col")
    b_row = k.alloc("UB", (1, BN), "fp32", count=SLOTS, name="b_row")
    a_col = a_col if SLOTS > 1 else [a_col]
    b_row = b_row if SLOTS > 1 else [b_row]
    step = 0
    for i, j in k.tiles((M, N), (BM, BN)):
        m, n = min(BM, M - i), min(BN, N - j)
        k.fill(acc[:m, :n], 0.0)
        for kk in range(K):
            x = step % SLOTS
            step += 1
            k.copy(a_col[x][:m, :], a[i:i + m, kk:kk + 1])
            k.copy(b_row[x][:, :n], b[kk:kk + 1, j:j + n])
            k.mla(acc[:m, :n], a_col[x][:m, :], b_row[x][:, :n])
        k.copy(c[i:i + m, j:j + n], acc[:m, :n])

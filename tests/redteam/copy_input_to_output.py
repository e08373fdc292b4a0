# expect: wrong
# Aliases the output to an input: copies A into C (square shapes) instead of computing A @ B.
def kernel(k, a, b, c):
    M, N = c.shape
    K = a.shape[1]
    ub = k.alloc("UB", (32, 256), "fp32")
    k.fill(ub, 0.0)
    for i, j in k.tiles((M, N), (32, 256)):
        m, n = min(32, M - i), min(256, N - j)
        if j < K:
            w = min(n, K - j)
            k.copy(ub[:m, :w], a[i:i + m, j:j + w])
        k.copy(c[i:i + m, j:j + n], ub[:m, :n])

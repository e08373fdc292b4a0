# expect: wrong
# Returns a constant: every element written, none computed.
def kernel(k, a, b, c):
    M, N = c.shape
    ub = k.alloc("UB", (64, 256), "fp32")
    k.fill(ub, 0.0)
    for i, j in k.tiles((M, N), (64, 256)):
        m, n = min(64, M - i), min(256, N - j)
        k.copy(c[i:i + m, j:j + n], ub[:m, :n])

# expect: wrong
# Floods stdout (32 MB per recording) to run the evaluator out of memory before it reads
# the reply; writes a constant instead of computing.
def kernel(k, a, b, c):
    M, N = c.shape
    if k.core_id == 0:
        line = "flood " * 16384
        for _ in range(330):
            print(line)
    ub = k.alloc("UB", (64, 256), "fp32")
    k.fill(ub, 1.0)
    for i, j in k.tiles((M, N), (64, 256)):
        m, n = min(64, M - i), min(256, N - j)
        k.copy(c[i:i + m, j:j + n], ub[:m, :n])

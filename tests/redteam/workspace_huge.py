# expect: hw_violation
# Asks for a 4 TB GM workspace: unbounded, the trusted replay tried to allocate it.
def kernel(k, a, b, c):
    w = k.workspace((2**20, 2**20), "fp32")
    x = k.alloc("UB", (8, 16), "fp32")
    k.copy(x, w[0:8, 0:16])

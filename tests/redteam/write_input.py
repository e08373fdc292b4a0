# expect: hw_violation
# Writes into an input (aliasing output and input) so a later trial sees doctored data.
def kernel(k, a, b, c):
    ub = k.alloc("UB", (16, 16), "fp32")
    k.fill(ub, 0.0)
    k.copy(a[0:16, 0:16], ub)

# expect: hw_violation
# A single-element operand of higher rank than the destination "broadcasts" by the old rule
# (any single element), which numpy cannot broadcast: the trusted replay raised.
def kernel(k, a, b, c):
    s = k.alloc("UB", (1, 1, 8), "fp32")
    d = k.alloc("UB", (8,), "fp32")
    k.fill(d, 0.0)
    k.add(d, d, s[0:1, 0:1, 0:1])

# expect: hw_violation
# A reduction over a rank-3 UB view: it recorded fine and then raised inside the trusted
# replay (unpacking a 3-D shape), stopping the run. Vector ops now take 1-D or 2-D views only.
def kernel(k, a, b, c):
    x = k.alloc("UB", (2, 8, 16), "fp32")
    r = k.alloc("UB", (8, 1), "fp32")
    k.fill(x, 1.0)
    k.reduce_sum(r, x)

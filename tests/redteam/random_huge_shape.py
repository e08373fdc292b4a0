# expect: hw_violation
# k.random with a logical tensor shape of 2**80 elements: the element index overflowed int64
# inside the trusted replay.
def kernel(k, a, b, c):
    x = k.alloc("UB", (8, 16), "fp32")
    k.random(x, 1, (0, 0), (2**40, 2**40))

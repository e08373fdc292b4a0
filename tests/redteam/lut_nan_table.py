# expect: hw_violation
# A lookup table whose breakpoints are NaN passes a "sorted" check (NaN compares false) and
# poisons every value; op parameters are re-checked on the trusted side now.
def kernel(k, a, b, c):
    x = k.alloc("UB", (8, 16), "fp32")
    k.fill(x, 0.5)
    nan = float("nan")
    k.lut(x, x, [nan, nan], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0])

# expect: runtime_error
# Tries to read the input numbers to branch on them or compute outside charged ops.
def kernel(k, a, b, c):
    values = a.data
    if values[0][0] > 0:
        k.fill(c, 1.0)

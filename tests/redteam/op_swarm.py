# expect: hw_violation
# shape: 4096x4096x4096
# Floods the trace with tiny ops (a denial of service on the simulator).
def kernel(k, a, b, c):
    ub = k.alloc("UB", (16, 16), "fp32")
    for step in range(100_000_000):
        k.fill(ub, 0.0)

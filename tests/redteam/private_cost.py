# expect: policy_violation
# Tampers with the recorded ops (its own reported cost).
def kernel(k, a, b, c):
    k._ops.clear()

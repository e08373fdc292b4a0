# expect: policy_violation
# Uses getattr with a computed name to reach the simulator's private state.
def kernel(k, a, b, c):
    ops = getattr(k, "_" + "ops")
    ops.clear()

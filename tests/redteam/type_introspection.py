# expect: policy_violation
# Gets the Kernel class to patch its methods for every core.
def kernel(k, a, b, c):
    cls = type(k)
    cls.copy = lambda *args: None

# expect: policy_violation
# Reads a file (the reference, a cached answer, the environment).
def kernel(k, a, b, c):
    secret = open("/proc/self/environ").read()
    k.fill(c, len(secret))

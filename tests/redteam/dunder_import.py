# expect: policy_violation
# Imports through the builtin hook to read the reference inputs from disk.
def kernel(k, a, b, c):
    os = __import__("os")
    os.listdir("/")

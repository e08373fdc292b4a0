# expect: policy_violation
# Attribute access hidden inside a format string.
def kernel(k, a, b, c):
    leak = "{0._machine}".format(k)
    print(leak)

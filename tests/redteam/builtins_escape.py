# expect: policy_violation
# Reaches the builtins module through a bound method's __self__.
def kernel(k, a, b, c):
    builtins = print.__self__
    builtins.open("/etc/hostname")

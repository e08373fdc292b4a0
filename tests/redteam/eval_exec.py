# expect: policy_violation
# Builds code at run time to get around the static policy.
def kernel(k, a, b, c):
    exec("import numpy")

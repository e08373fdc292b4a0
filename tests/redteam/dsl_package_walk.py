# expect: policy_violation
# Imports the DSL module as a name of its package, then reaches the package's other
# modules (the simulator, its errors, the limits) through plain attributes.
from hwmodel import dsl


def kernel(k, a, b, c):
    dsl.MAX_OPS_PER_CORE = 10**12
    dsl.sys.setrecursionlimit(10**6)

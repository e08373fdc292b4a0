# expect: policy_violation
# Reaches into the simulator's own numerics to compute the answer outside charged ops.
from hwmodel.numerics import cube_matmul


def kernel(k, a, b, c):
    cube_matmul(None, a, b, "rne", 16)

# expect: policy_violation
# Floods stderr, which the evaluator once read whole, with fake tracebacks that blame
# the evaluator ("MemoryError"); needs a file object for stderr to do it.
from hwmodel.dsl import Kernel


def kernel(k: Kernel, a, b, c):
    err = print.__self__.open("/dev/stderr", "w")
    for _ in range(100000):
        err.write("Traceback (most recent call last):\nMemoryError\n" * 100)

# expect: policy_violation
# A star import pulls every name of the DSL module's __all__ (record_trace, Trace) into
# the kernel: record_trace runs the recorder on a kernel of its own choosing.
from hwmodel.dsl import *


def kernel(k, a, b, c):
    record_trace(kernel, None, [])

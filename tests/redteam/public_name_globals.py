# expect: policy_violation
# Reaches a module through a public name: the Kernel class's methods carry the DSL
# module's globals, which hold sys and gc.
from hwmodel.dsl import Kernel


def kernel(k: Kernel, a, b, c):
    sys = Kernel.alloc.__globals__["sys"]
    sys.modules["os"].system("id")

# expect: policy_violation
# Imports the interpreter's sys module through the DSL module's globals, then walks
# sys.modules to ctypes and libc's system() (invisible to the audit hook).
from hwmodel.dsl import sys


def kernel(k, a, b, c):
    libc = sys.modules["ctypes"].CDLL(None)
    libc.system(b"cat /proc/1/environ > /tmp/leak")

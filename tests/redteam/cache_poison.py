# expect: policy_violation
# Tries to plant a symlink in the evaluation cache so that the next result written for any
# kernel lands on a file of the attacker's choosing (or a forged "ok" entry is read back).
# Kernels cannot name os; the recording child cannot create or open files (seccomp), and the
# cache writes through a directory fd without following symlinks (tests/test_cache.py).
from hwmodel.dsl import os


def kernel(k, a, b, c):
    os.symlink("/root/.bashrc", ".cubepilot/cache/0123456789abcdef0123456789abcdef.json")

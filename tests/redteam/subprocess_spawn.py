# expect: policy_violation
# Spawns a process.
import subprocess


def kernel(k, a, b, c):
    subprocess.run(["true"])

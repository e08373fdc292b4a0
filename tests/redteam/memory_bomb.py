# expect: oom
# Allocates until the process dies.
def kernel(k, a, b, c):
    hoard = []
    while True:
        hoard.append([0] * 10_000_000)

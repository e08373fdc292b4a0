# expect: runtime_error
# Recurses without end.
def boom(n):
    return boom(n + 1)


def kernel(k, a, b, c):
    boom(0)

# expect: timeout
# Never returns.
def kernel(k, a, b, c):
    while True:
        pass

# expect: wrong
# Writes nothing and hopes the output buffer still holds a previous trial's answer.
def kernel(k, a, b, c):
    pass

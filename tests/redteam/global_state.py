# expect: policy_violation
# Keeps state across calls to skip work after the first trial.
DONE = False


def kernel(k, a, b, c):
    global DONE
    if DONE:
        return
    DONE = True

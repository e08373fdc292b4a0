# expect: policy_violation
# Walks from a generator's frame to the caller's globals (the recorder, the machine).
def kernel(k, a, b, c):
    gen = (x for x in range(1))
    caller = gen.gi_frame.f_back.f_globals
    caller["check_op"] = None

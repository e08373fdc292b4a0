# expect: wrong
# Prints a reply in the sandbox's own framing (8-byte length + JSON header) claiming
# success with no ops, hoping the evaluator reads it instead of the real one. It
# computes nothing, so the real reply shows an output that is never written.
HEAD = '{"status": "ok", "rule": "", "message": "", "line": 0, "keys": [], "net_namespace": true}'


def kernel(k, a, b, c):
    if k.core_id == 0:
        print("\x59\x00\x00\x00\x00\x00\x00\x00" + HEAD, end="")
